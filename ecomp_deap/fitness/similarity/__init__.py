"""The similarity loss and its pieces: the distances (:mod:`.distances`), the perplexity
search and t-SNE's joint probabilities (:mod:`.perplexity`), the loss (:mod:`.loss`), and
the C kernels of the float32 CPU path (:mod:`.native`, ``csrc/similarity.c``, built on
first use). Imports torch, numpy and nothing else of the package.
"""
from .distances import centred_gram, distances_from_gram, rescaled_as_one, squared_distances
from .loss import (
                   DTYPES,
                   KERNELS,
                   count_active_units,
                   kl_divergence,
                   normalise_kernel,
                   parent_entropy_term,
                   similarity_from_distances,
                   student_t_probabilities,
                   tsne_similarity_loss,
)
from .perplexity import EPS, joint_probabilities

__all__ = ["EPS", "DTYPES", "KERNELS", "squared_distances", "centred_gram", "distances_from_gram", "rescaled_as_one",
           "joint_probabilities", "student_t_probabilities", "kl_divergence", "parent_entropy_term",
           "count_active_units", "tsne_similarity_loss", "similarity_from_distances", "normalise_kernel"]
