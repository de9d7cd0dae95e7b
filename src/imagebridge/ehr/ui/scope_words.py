"""Plain-language descriptions of SMART scopes for the consent page (SMART App Launch 2.2 §"Scopes")."""

from __future__ import annotations

from imagebridge.common.smart_scopes import parse_scope

_TYPES = {
    "*": "all of the health record",
    "ImagingStudy": "imaging studies (X-rays, CT, MRI, ultrasound) and their images",
    "Patient": "name, birth date and contact details",
    "DiagnosticReport": "test and imaging reports",
    "Observation": "measurements and test results",
    "Condition": "conditions and diagnoses",
    "Encounter": "visits",
}
_OTHERS = {
    "openid": "Know who you are (your sign-in identity)",
    "fhirUser": "Know which person you are in the record",
    "launch": "Open within the EHR for the chart you are looking at",
    "launch/patient": "Know whose record you chose",
    "offline_access": "Keep access when you are not using the app (until you revoke it)",
    "online_access": "Keep access while you are signed in",
}
_VERBS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


def describe(scope: str) -> str:
    if scope in _OTHERS:
        return _OTHERS[scope]
    parsed = parse_scope(scope)
    if parsed is None:
        return scope
    what = _TYPES.get(parsed.resource_type, parsed.resource_type)
    verbs = " and ".join(_VERBS[p] for p in "cruds" if p in parsed.permissions)
    whose = {"patient": "this patient's", "user": "the records you can see:", "system": "any"}[parsed.level]
    return f"{verbs.capitalize()} {whose} {what}"
