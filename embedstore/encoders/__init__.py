"""Encoders: video (and text) models behind one interface, found by name.

`get_encoder("r3d" | "r3d-v0" | "videomae" | "echoclip" | "echoclip-r", weights=...)` builds one;
`list_encoders()` says what each expects and where its weights were found, without loading models.
"""
from embedstore.encoders.base import Encoder, get_encoder, list_encoders

__all__ = ["Encoder", "get_encoder", "list_encoders"]
