"""Deployment to edge boards: board table, runtime wheels, bundles (with a static runner), remote runs."""
