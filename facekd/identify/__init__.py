"""1:N identification over a persistent gallery (issue 27): records, stores, search
indexes, the gallery, and the open-set threshold."""
