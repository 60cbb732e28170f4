"""Datasets, LFW pairs, insightface binaries, packs and transforms."""
