"""Which failures of the operating system are a job's own and which are the storage's: the one rule
the engine (reading a recording), the outputs (writing a transcript) and the queue share.

A job's own error comes back every time, whatever the wait: the file is gone, its name is too
long for the outbox's file system or has a character it refuses (`:` on exFAT), a folder refuses
writes (permissions, `chattr +i`). That job fails with the reason and the next one runs. Anything
else (disk full, an I/O error, a read-only file system, a share whose server is lost or slow) is
the storage's: the job waits and is tried again, from its checkpoint.
"""

from __future__ import annotations

import errno

JOB_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP, errno.ENAMETOOLONG,
                        errno.EACCES, errno.EPERM, errno.EINVAL, errno.EILSEQ})


def storage_trouble(error: OSError) -> bool:
    return error.errno not in JOB_ERRNOS
