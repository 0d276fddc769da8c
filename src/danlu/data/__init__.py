"""Documents in, token shards out: sources, readers, cleaning, splitting, packing and the token loader."""
