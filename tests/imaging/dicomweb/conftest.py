"""Fixtures for the pixel-path tests: a stack of their own (see pixel_stack.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from tests.imaging.dicomweb.pixel_stack import (
    READ_SCOPE,
    VIEWER,
    WRITE_SCOPE,
    PixelStack,
    Sample,
    bomb,
    corpus,
    monochrome1,
    native_bomb,
    register,
    stow,
    wait_published,
)

from imagebridge.apps.smart_client import BackendClient, backend_token
from imagebridge.apps.stack import LocalStack
from imagebridge.common import jose


@pytest.fixture(scope="session")
def pixel_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PixelStack]:
    """Both services with the sample corpus and two decode bombs stored and published."""
    tmp = tmp_path_factory.mktemp("pixel-stack")
    stack = LocalStack(tmp, extra_imaging_env={"IMAGEBRIDGE_IMAGING_CORS_ALLOWED_ORIGINS": VIEWER})
    stack.provision()
    reader = BackendClient("pixel-reader", jose.load_or_create_private_jwk(tmp / "reader.json", "ES384"))
    modality = BackendClient(
        "pixel-modality", jose.load_or_create_private_jwk(tmp / "modality.json", "ES384")
    )
    register(stack, reader, modality)
    try:
        stack.start()
        samples = [*corpus(), bomb(), native_bomb(), monochrome1()]
        stored: dict[str, Sample] = {}
        with httpx.Client(timeout=120) as http:
            token = str(
                backend_token(stack.ehr_settings.fhir_base, modality, WRITE_SCOPE, http)["access_token"]
            )
            for sample in samples:  # one by one: a refused sample must not hide the others
                if stow(http, stack.imaging_settings.dicomweb_base, token, [sample]).status_code == 200:
                    stored[sample.name] = sample
            read = str(backend_token(stack.ehr_settings.fhir_base, reader, READ_SCOPE, http)["access_token"])
            wait_published(stack, read, http)
        yield PixelStack(stack, reader, modality, stored)
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def pixel_http(pixel_stack: PixelStack) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """An HTTP client and the reader's Authorization header."""
    with httpx.Client(timeout=120) as http:
        yield http, {"Authorization": f"Bearer {pixel_stack.token(http)}"}
