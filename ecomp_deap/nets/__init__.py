"""Networks: how a parent is read and cut (:mod:`.chain`), run with a genome's tensors
(:mod:`.forward`), built and trained (:mod:`.parents`) and exported (:mod:`.export`)."""
