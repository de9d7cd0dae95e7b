"""Where each service says it is reached (common/settings.py ``origin``)."""

from __future__ import annotations

from imagebridge.common.settings import EhrSettings, ImagingSettings


def test_origin_is_https_when_the_service_itself_serves_tls() -> None:
    """Discovery, issuer and every URL handed out must not point clients at plain HTTP on a TLS port."""
    for settings in (EhrSettings, ImagingSettings):
        assert settings(host="127.0.0.1", port=8443, tls_certfile="c.pem").origin == "https://127.0.0.1:8443"
        assert settings(host="127.0.0.1", port=8080).origin == "http://127.0.0.1:8080"
        public = settings(public_url="https://imaging.example.org/", tls_certfile="c.pem")
        assert public.origin == "https://imaging.example.org"
