"""DANet position (``danet.pam``) and channel (``danet.cam``) attention: mechanism, naive, vectorized, ext, peers."""

from impls.danet import ext, mechanism, naive, peers, vectorized  # noqa: F401  (registration)
from impls.non_local import report  # noqa: F401  (report section shared with the non-local suite)
