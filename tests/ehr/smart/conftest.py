"""The shared EHR fixtures (tests/ehr/smart/fixtures.py)."""

from tests.ehr.smart.fixtures import ehr, ehr_settings, fhir_base, introspector, origin

__all__ = ["ehr", "ehr_settings", "fhir_base", "introspector", "origin"]
