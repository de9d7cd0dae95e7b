"""The shared EHR fixtures (tests/ehr/smart/fixtures.py)."""

from tests.ehr.smart.fixtures import ehr, fhir_base, introspector, origin

__all__ = ["ehr", "fhir_base", "introspector", "origin"]
