# coding=utf-8
"""Processor for TinyLegacyVLM: a tokenizer and a tiling image pipeline in one class.

An image is cut into square tiles: as many rows and columns of `tile_size` pixels as its
height and width need, at most `max_tiles` in all, plus one thumbnail of the whole image
when there is more than one tile. Every tile becomes `(tile_size // patch_size) ** 2`
image tokens, so the number of `<image>` placeholders depends on the image size.
"""
import math
from typing import List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin


class TinyLegacyVLMProcessor(ProcessorMixin):
    attributes = ["tokenizer"]
    tokenizer_class = "PreTrainedTokenizerFast"

    def __init__(self, tokenizer=None, tile_size=16, patch_size=8, max_tiles=6, image_token="<image>", **kwargs):
        self.tile_size = tile_size
        self.patch_size = patch_size
        self.max_tiles = max_tiles
        self.image_token = image_token
        self.image_mean = 0.5
        self.image_std = 0.5
        super().__init__(tokenizer)

    def get_tile_grid(self, height, width):
        rows = min(math.ceil(height / self.tile_size), self.max_tiles)
        cols = min(math.ceil(width / self.tile_size), max(1, self.max_tiles // rows))
        return rows, cols

    def tile_image(self, image):
        """[3, H, W] float tensor -> [tiles, 3, tile_size, tile_size], thumbnail last."""
        rows, cols = self.get_tile_grid(image.shape[-2], image.shape[-1])
        size = self.tile_size
        resized = F.interpolate(image[None], size=(rows * size, cols * size), mode="bilinear", align_corners=False)[0]
        tiles = resized.unfold(1, size, size).unfold(2, size, size)  # [3, rows, cols, size, size]
        tiles = tiles.permute(1, 2, 0, 3, 4).reshape(rows * cols, 3, size, size)
        if rows * cols > 1:
            thumbnail = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)
            tiles = torch.cat([tiles, thumbnail], dim=0)
        return (tiles - self.image_mean) / self.image_std

    def _to_tensor(self, image):
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(image)
            if image.ndim == 3 and image.shape[-1] in (1, 3):
                image = image.permute(2, 0, 1)
        image = image.float()
        return image / 255.0 if image.max() > 1.0 else image

    def __call__(
        self,
        text: Union[str, List[str]] = None,
        images=None,
        padding: Union[bool, str] = False,
        return_tensors: Optional[str] = "pt",
        **kwargs,
    ) -> BatchFeature:
        if isinstance(text, str):
            text = [text]
        images = [] if images is None else (images if isinstance(images, (list, tuple)) else [images])
        images = [self._to_tensor(image) for image in images]
        pixel_values = []
        image_index = 0
        expanded = []
        for sample in text:
            pieces = sample.split(self.image_token)
            out = pieces[0]
            for piece in pieces[1:]:
                image = images[image_index]
                image_index += 1
                height, width = image.shape[-2], image.shape[-1]
                rows, cols = self.get_tile_grid(height, width)
                num_tiles = rows * cols + (1 if rows * cols > 1 else 0)
                num_image_tokens = num_tiles * (self.tile_size // self.patch_size) ** 2
                out += " " + " ".join([self.image_token] * num_image_tokens) + " " + piece
                pixel_values.append(self.tile_image(image))
            expanded.append(out)
        if image_index != len(images):
            raise ValueError(f"{len(images)} images for {image_index} {self.image_token} placeholders")
        data = dict(self.tokenizer(expanded, padding=padding, return_tensors=return_tensors))
        if pixel_values:
            data["pixel_values"] = torch.cat(pixel_values, dim=0)
        return BatchFeature(data=data)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)
