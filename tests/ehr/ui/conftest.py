"""The shared EHR fixtures (tests/ehr/smart/fixtures.py)."""

from tests.ehr.smart.fixtures import ehr, fhir_base, origin

__all__ = ["ehr", "fhir_base", "origin"]
