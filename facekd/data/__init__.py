"""Datasets, image reading, LFW pairs, insightface binaries, packs and transforms."""
