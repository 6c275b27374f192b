"""Preprocessing: fingerprint/statistics, resampling, normalisation and case files."""
