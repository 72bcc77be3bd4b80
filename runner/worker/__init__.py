"""The worker machinery: the supervisor (`promptbatch run`) and its worker processes, each
claiming jobs and running them as coroutines on one event loop (`process`, `jobs`), the group
commit that writes every job outcome (`group_commit`), the daily scheduler, backoff, the
brand-catalog cache and the drain's progress line.
"""
