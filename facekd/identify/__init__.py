"""1:N identification over a persistent gallery (issue 27): records, stores, search
indexes, the gallery, the open-set threshold, and the LFW identification protocol
(:mod:`.evaluation`)."""
