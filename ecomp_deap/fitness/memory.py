"""The evaluator's memory bounds, in one place (read at call time, so tests can shrink them).

* ``CHUNK_BYTES``: stacked weights (and, for the stacked forward, feature maps) of the
  individuals measured together, when ``EcompConfig.eval_chunk`` is automatic;
* ``SIMILARITY_BYTES``: a chunk's similarity work space (distances and search);
* ``IMAGE_BYTES``: the largest feature map of one forward when batches are concatenated,
  and of a first stage run for many individuals at once.
"""
CHUNK_BYTES = 256 * 2**20
SIMILARITY_BYTES = 512 * 2**20
IMAGE_BYTES = 128 * 2**20
