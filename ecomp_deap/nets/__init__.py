"""Networks: reading a parent once (:mod:`.reader`, :mod:`.chain`: where it is cut into
stages and groups), a network as masks plus tensors (:mod:`.masked`, with crossover's row
splices in :mod:`.spliced`), running it (:mod:`.forward`), exporting it to a smaller
module (:mod:`.export`), refitting it to the parent in closed form (:mod:`.refit`), the
default parents (:mod:`.parents`) and loading torch files safely (:mod:`.safe_load`).

Imports the core modules (``errors``, ``config``, ``files``, ``validation``) and nothing
from ``fitness``, ``search``, ``study`` or ``api``.
"""
