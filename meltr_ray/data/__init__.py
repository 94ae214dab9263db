"""The video data path without Ray: the shard schema, ingest, decoding, tokenisation, synthetic data.

``meltr_ray.cluster.data`` streams the shards through Ray Data; everything here imports without Ray.
"""
from __future__ import annotations

from .ingest import IngestReport, ingest
from .samples import SampleBuilder
from .schema import SCHEMA, SCHEMA_VERSION
from .synthetic import make_synthetic_dataset, read_frame_code
from .tokenize import build_vocab, encode_mc_prompts, encode_texts, load_tokenizer
from .video import get_decoder, random_segment_indices, sample_clip, uniform_indices

__all__ = ["SCHEMA", "SCHEMA_VERSION", "IngestReport", "ingest", "SampleBuilder", "make_synthetic_dataset",
           "read_frame_code", "build_vocab", "load_tokenizer", "encode_texts", "encode_mc_prompts", "get_decoder",
           "sample_clip", "uniform_indices", "random_segment_indices"]
