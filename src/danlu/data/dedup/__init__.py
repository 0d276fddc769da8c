"""Near-duplicate and substring dedup: MinHash-LSH, SimHash, and suffix-array exact-substring removal.

Each method is a pipeline block with `run(docs) -> Iterator[docs]` and `stats`; the functions beneath
them return pairs and clusters for reports. Exact (whole-document) dedup lives in danlu.data.clean.
"""

from danlu.data.dedup.clusters import NearDuplicates, connected_components
from danlu.data.dedup.minhash import (
    MinHashDedup,
    minhash_near_duplicates,
    minhash_signatures,
    optimal_bands,
    signatures_from_hashes,
)
from danlu.data.dedup.shingles import Shingling, jaccard, shingle_hashes
from danlu.data.dedup.simhash import SimHashDedup, simhash, simhash_near_duplicates
from danlu.data.dedup.substring import (
    SubstringDedup,
    cut_spans,
    remove_repeated_substrings,
    repeated_spans,
)
from danlu.data.dedup.suffix_array import lcp_array, suffix_array, suffix_array_lcp

__all__ = [
    "MinHashDedup",
    "NearDuplicates",
    "Shingling",
    "SimHashDedup",
    "SubstringDedup",
    "connected_components",
    "cut_spans",
    "jaccard",
    "lcp_array",
    "minhash_near_duplicates",
    "minhash_signatures",
    "optimal_bands",
    "remove_repeated_substrings",
    "repeated_spans",
    "shingle_hashes",
    "signatures_from_hashes",
    "simhash",
    "simhash_near_duplicates",
    "suffix_array",
    "suffix_array_lcp",
]
