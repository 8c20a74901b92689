"""The ordered registry of rewrites. Each module holds one transform; order matters:
attention is routed before flags are declared, and imports are cleaned up last, once
every other rewrite has dropped the names it no longer needs."""

from transforms.attention_classes import CollapseBackendClasses
from transforms.attention_interface import RouteAttention
from transforms.attention_selection import AttentionSelection
from transforms.backend_flags import DeclareBackends
from transforms.base import Change, PortState, Transform
from transforms.buffer_init import RebuildBuffers
from transforms.cache_api import ModernCacheAPI
from transforms.config_defaults import LegacyConfigDefaults
from transforms.generation import GenerationSupport
from transforms.kwargs_threading import ThreadKwargs
from transforms.layer_index import ThreadLayerIndex
from transforms.masks import UseMaskingUtils
from transforms.post_init import CallPostInit
from transforms.removed_imports import RemovedImports
from transforms.removed_methods import RemovedModelMethods
from transforms.rope_config import RopeConfigAccess
from transforms.tied_weights import TiedWeightsDict
from transforms.tuple_cache import CacheObjects

REGISTRY: tuple[type[Transform], ...] = (
    CollapseBackendClasses,
    ThreadLayerIndex,
    CacheObjects,
    RouteAttention,
    UseMaskingUtils,
    ModernCacheAPI,
    RopeConfigAccess,
    RebuildBuffers,
    RemovedModelMethods,
    LegacyConfigDefaults,
    ThreadKwargs,
    GenerationSupport,
    CallPostInit,
    TiedWeightsDict,
    DeclareBackends,
    RemovedImports,
    AttentionSelection,
)

__all__ = ["REGISTRY", "Change", "PortState", "Transform"]
