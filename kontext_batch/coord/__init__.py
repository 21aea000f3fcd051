"""Coordination in Redis: slot leases and wait lists, fenced job records, key pools, worker
heartbeats, delayed messages, run records, budgets, the submit rate limit and the autoscaler's
demand signal, the poll planners' shared latencies; how we connect
(:mod:`~kontext_batch.coord.connection`) and whether a Redis can be trusted with all of it
(:mod:`~kontext_batch.coord.policy`, which writes no key), and which protocol each process
speaks (:mod:`~kontext_batch.coord.protocol`).

Every key the system keeps is below, named by :class:`~kontext_batch.coord.keys.Keys` (all but
``metrics-exporter``). Each starts with the namespace ``kb``: no setting changes it (``Keys(ns)``
takes another for tests only). Celery's broker keys, in the same Redis, are kombu's and not listed.
TTL "-" means the key lives until its owner deletes it; scores in ms are epoch milliseconds. TTL "R"
is the run's retention: none while the run runs; ``KONTEXT_RUN_RETENTION_S`` from its end, set on
all of its keys at once (``retry`` removes it until the run ends again).

===========================  ======  =====  =====================================================================
key                          type    TTL    holds
===========================  ======  =====  =====================================================================
{ns}:gates                   set     -      wait ids ``"{pool}|{endpoint}"`` of every wait list ever used
{ns}:wait:{pool}:{endpoint}  list    -      job refs waiting for a slot on any key of the pool, FIFO
{ns}:lease:{fp}              zset    -      job refs holding an active slot on the key; score: lease expiry ms
{ns}:lease:{fp}:{endpoint}   zset    -      the same, one endpoint
{ns}:pools                   hash    -      pool id -> JSON list of the key fingerprints of the pool
{ns}:keys-out                hash    -      key fingerprint -> why the API refused it (401/403/402)
{ns}:watch                   zset    -      job refs in flight (granted..stored); score: deadline ms
{ns}:job:{run}:{row}         hash    -      one in-flight job (fields below); deleted when its row is final
{ns}:proc:{proc}             string  5 s    a live worker process's heartbeat: JSON version, protocol, and the
                                            caps of its keys (``keys``)
{ns}:replica-probe:{proc}    string  60 s   a process's last write before it asks ``WAIT`` whether its writes reached a
                                            replica (:mod:`~kontext_batch.coord.replicas`; its value means nothing)
{ns}:holders:{fp}            zset    -      processes holding the key; score: heartbeat expiry ms
{ns}:key-caps                hash    -      key fingerprint -> the caps its holders last announced (JSON)
{ns}:delayed                 zset    -      task messages not due yet, JSON [kind, ref, token, fp]; score: due ms
{ns}:budget:{run}            hash    R      budget (absent: no limit), spent, reserved (credits) of one run
{ns}:runs                    zset    -      run ids; score: creation time in epoch seconds
{ns}:runs:open               set     -      runs not finalized yet (swept for completion)
{ns}:runs:ended              zset    -      ended runs; score: when their keys expire (epoch s); the sweep
                                            drops a run from ``runs`` once its keys are gone
{ns}:run-gone:{run}          hash    R+90d  tombstone of an ended run: finished_at, status, output,
                                            results_uri (and pruned_at once ``prune`` removed it: 90 d)
{ns}:run:{run}               hash    R      run metadata (manifest, output, pool, keys, total, status, stop
                                            flags, webhook URL and secret), counters (task_executions,
                                            possible_duplicates), last_final_at, seen:* flags,
                                            passes (JSON [start, end] of each ended pass),
                                            pass_started_at (set by ``retry`` of an ended run),
                                            results_uri (the output's results.csv) and
                                            run_results_uri (the run's own), set at its end
{ns}:run:{run}:rows          hash    R      row -> the row's job spec (JSON)
{ns}:run:{run}:results       hash    R      row -> the row's final result (JSON); written once, until
                                            ``retry`` forgets it
{ns}:run:{run}:counts        hash    R      status -> number of final rows with that status
{ns}:run:{run}:ndone         string  R      number of final rows (the completion counter)
{ns}:run:{run}:finalizing    string  300 s  claim of the one results.csv writer at work now
{ns}:output-lock:{url}       string  120 s  the lock of the merge into one output's results.csv (its holder's
                                            token), while one run's finalize reads, merges and writes it
{ns}:submit-rate:{second}    string  2 s    submits sent in that wall-clock second (one key per second)
{ns}:latency:{endpoint}      list    8 d    task latencies (s) the poll planners saw end on the endpoint, newest first,
                                            at most 256; every write renews the TTL
{ns}:demand                  list    -      one item per row of the open runs not final yet (only its length
                                            means anything: KEDA scales the workers on it); deleted at 0
{ns}:metrics-exporter        string  45 s   process id of the one worker exporting the cluster-wide gauges
===========================  ======  =====  =====================================================================

A job hash holds ``step`` (the fencing token), ``state`` (queued, granted, submitting, polling,
storing), ``busy`` and ``holder`` (the process working on it), ``pool``, ``gate`` (its slot id
``"{fp}|{endpoint}"``; the field keeps its first name), ``attempts``, ``key``, ``reserved``,
``bfl_task_id``, ``polling_url``, ``cost_credits``, ``submitted_at`` (before the POST), ``accepted_at``
(its answer), ``polls``, ``poll_errors``,
``ready_seen_at``, ``last_error``, ``possible_duplicate`` and ``webhook_result``; and what the
row cost before its current task: ``charged`` (credits of tasks it left behind: an expired sample,
a refused key), ``attempts_before`` and ``cost_before`` (its earlier passes, set by ``retry``).

Owners (the only modules that write each key; everyone else goes through their methods):

- :mod:`~kontext_batch.coord.slots`: ``gates``, ``wait`` and ``lease``; its dispatch script also
  starts each granted job (``job``, ``watch``), and ``enqueue`` may give a job its first fields.
- :mod:`~kontext_batch.coord.jobs`: ``job`` and ``watch``; its scripts renew ``lease`` entries and
  read ``proc`` to tell a live holder from a dead one, and ``requeue`` frees a lease and pushes the
  job back onto its ``wait`` list.
- :mod:`~kontext_batch.coord.pools`: ``pools`` and ``keys-out``.
- :mod:`~kontext_batch.coord.holders`: ``proc``, ``holders`` and ``key-caps``.
- :mod:`~kontext_batch.coord.replicas`: ``replica-probe``.
- :mod:`~kontext_batch.coord.delays`: ``delayed``.
- :mod:`~kontext_batch.coord.budget`: ``budget``.
- :mod:`~kontext_batch.coord.runs`: ``runs``, ``runs:open``, ``runs:ended``, ``run-gone`` and the ``run``
  keys; and the TTL of ``budget`` (its retention, with the run's other keys) and its deletion by
  ``prune``.
- :mod:`~kontext_batch.coord.ratelimit`: ``submit-rate``.
- :mod:`~kontext_batch.coord.demand`: ``demand``.
- :mod:`~kontext_batch.coord.latencies`: ``latency``.
- :mod:`~kontext_batch.coord.outputs`: ``output-lock``.
- :mod:`kontext_batch.metrics` (outside this package, naming the key itself): ``metrics-exporter``,
  renewed at each scrape.

One pub/sub channel, no key: ``{ns}:run:{run}:ended`` carries the announcement of a run's end
(:mod:`~kontext_batch.coord.ends`), so that its followers need not wait for their next look.

A job ref is ``"{run}:{row}"``. No key or value ever holds the API key: accounts are told apart by
its fingerprint (:attr:`kontext_batch.secret.Secret.fingerprint`). The Lua scripts these modules
run are in ``coord/lua/``, one file each, loaded at import by their owner.
"""
