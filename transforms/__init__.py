"""The ordered registry of rewrites. Each module holds one transform; order matters:
attention is routed before flags are declared, and imports are cleaned up last, once
every other rewrite has dropped the names it no longer needs. The parallel plans are
inferred from the routed code's structure, and the reshapes they shard made head-agnostic,
after everything that changes attention."""

from transforms.argument_updates import OutOfPlaceArgumentUpdates
from transforms.attention_classes import CollapseBackendClasses
from transforms.attention_config import ThreadAttentionConfig
from transforms.attention_interface import RouteAttention
from transforms.attention_layout import UnflattenHeads
from transforms.attention_selection import AttentionSelection
from transforms.backend_flags import DeclareBackends
from transforms.base import Change, PortState, Transform
from transforms.base_model_prefix import BaseModelPrefix
from transforms.bias_rows import BiasPerQueryRow
from transforms.buffer_init import RebuildBuffers
from transforms.cache_api import ModernCacheAPI
from transforms.config_defaults import LegacyConfigDefaults
from transforms.conv1d_linear import Conv1DToLinear
from transforms.custom_normalisation import RefuseCustomSoftmax
from transforms.deprecated_config import DeprecatedConfigReads
from transforms.generation import GenerationSupport
from transforms.head_shapes import HeadAgnosticShapes
from transforms.in_library_layers import RefuseInLibraryLayers
from transforms.kv_heads_config import KeyValueHeadsInConfig
from transforms.kwargs_threading import ThreadKwargs
from transforms.layer_index import ThreadLayerIndex
from transforms.mask_positions import MaskCountedPositions
from transforms.masks import UseMaskingUtils
from transforms.multimodal_config import MultimodalConfigNames
from transforms.multimodal_delegation import DropTowerDelegations
from transforms.multimodal_features import ImageFeaturesMethod
from transforms.multimodal_merge import ScatterIntoPlaceholders
from transforms.multimodal_placeholders import ExpandPlaceholders
from transforms.multimodal_processor import ProcessorHooks
from transforms.multimodal_split import SplitBaseAndHead
from transforms.parallel_plans import WriteParallelPlans
from transforms.post_init import CallPostInit
from transforms.removed_imports import RemovedImports
from transforms.removed_methods import RemovedModelMethods
from transforms.rope_config import RopeConfigAccess
from transforms.rope_positions import RopePositions
from transforms.split_fused import SplitFusedProjections
from transforms.tied_head_plan import TiedHeadPlan
from transforms.tied_weights import TiedWeightsDict
from transforms.tuple_cache import CacheObjects
from transforms.value_head_padding import PadValueHeads
from transforms.window_layers import FullAttentionLayers
from transforms.window_switch_layers import WindowSwitchLayerTypes

REGISTRY: tuple[type[Transform], ...] = (
    CollapseBackendClasses,
    ThreadLayerIndex,
    ThreadAttentionConfig,
    CacheObjects,
    UnflattenHeads,
    RouteAttention,
    UseMaskingUtils,
    ModernCacheAPI,
    RopeConfigAccess,
    RebuildBuffers,
    RemovedModelMethods,
    LegacyConfigDefaults,
    MultimodalConfigNames,
    DropTowerDelegations,
    ThreadKwargs,
    ImageFeaturesMethod,
    ScatterIntoPlaceholders,  # needs get_image_features; tells ExpandPlaceholders what to count
    ExpandPlaceholders,  # writes the expansion ProcessorHooks derives its hooks from
    ProcessorHooks,
    SplitBaseAndHead,
    GenerationSupport,
    CallPostInit,
    TiedWeightsDict,
    DeclareBackends,
    Conv1DToLinear,
    SplitFusedProjections,
    WriteParallelPlans,
    TiedHeadPlan,  # reads the tie tied-weights wrote and the plan parallel-plans wrote
    HeadAgnosticShapes,
    RemovedImports,
    RopePositions,  # adds no import: its place after the import clean-up is safe
    AttentionSelection,
    BiasPerQueryRow,  # reads the masks' builder call and attention-interface's facts
    KeyValueHeadsInConfig,  # reads attention-interface's facts
    RefuseCustomSoftmax,  # reads only the analysis: its place does not matter
    FullAttentionLayers,  # reads the ported code of every file
    BaseModelPrefix,
    PadValueHeads,  # reads the routed attention code of every file
    RefuseInLibraryLayers,  # reads only the imports and their uses: its place does not matter
    MaskCountedPositions,  # after kwargs-threading: its new parameter sits before `**kwargs`
    OutOfPlaceArgumentUpdates,
    WindowSwitchLayerTypes,  # reads attention-interface's window switches
    DeprecatedConfigReads,  # renames reads only: its place does not matter
)

__all__ = ["REGISTRY", "Change", "PortState", "Transform"]
