"""FHIR Bulk Data Access STU2 export (``$export``), filtered by the same policy engine."""
