"""bbopt on Ray: the HTTP ask/tell service (optimizer state on Ray actors, studies in
the SQL store), its Python client, and a Ray Tune searcher."""
