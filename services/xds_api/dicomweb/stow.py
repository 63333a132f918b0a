"""STOW-RS (PS3.18 10.5): instances stored from a multipart/related body."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["dicomweb"])
