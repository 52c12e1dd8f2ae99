"""Scenarios: manifests and programs, built-in and the user's, and the sysctls they sweep."""
