"""facekd."""
