package sqltable

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/store"
)

// Job states.
const (
	// JobNewDEK: the job is recorded; its target DEK may or may not have
	// been added to the keyset yet (see Job.PrevDEK).
	JobNewDEK = "new-dek"
	// JobRunning: the target DEK is recorded; chunks are being processed.
	JobRunning = "running"
	// JobDone: every chunk is done.
	JobDone = "done"
	// JobAbandoned: given up by Abandon (keyctl reencrypt --abandon-job);
	// its rows are under whatever DEK they were, all in the keyset.
	JobAbandoned = "abandoned"
)

// openStates is the SQL list of the states of an unfinished job.
const openStates = `('` + JobNewDEK + `', '` + JobRunning + `')`

// Chunk states.
const (
	chunkPending = "pending"
	chunkRunning = "running"
	chunkDone    = "done"
)

var (
	// ErrNoJob is returned when a table has no job of the kind asked for.
	ErrNoJob = errors.New("no re-encryption job")
	// ErrNoChunk is returned by Claim when no chunk can be claimed now.
	ErrNoChunk = errors.New("no chunk to claim")
	// ErrBusy is returned by LockSingle when another process holds the lock.
	ErrBusy = errors.New("another keyctl reencrypt is running on this table")
)

// schema is the job tables' DDL; only the job id column differs between
// the dialects.
var schema = map[dialect][]string{
	sqlite:   jobSchema("id INTEGER PRIMARY KEY AUTOINCREMENT"),
	postgres: jobSchema("id BIGSERIAL PRIMARY KEY"),
}

// jobSchema returns the statements that create and update the job tables,
// with idColumn as the job table's id column.
func jobSchema(idColumn string) []string {
	return []string{
		`CREATE TABLE IF NOT EXISTS keyctl_reencrypt_jobs (
			` + idColumn + `,
			tbl TEXT NOT NULL,
			key_col TEXT NOT NULL,
			cols TEXT NOT NULL,
			aad TEXT NOT NULL,
			prev_dek BIGINT NOT NULL,
			target_dek BIGINT,
			state TEXT NOT NULL,
			created BIGINT NOT NULL,
			finished BIGINT,
			moved TEXT)`,
		// Schema 1 had the index keyctl_reencrypt_jobs_open, WHERE state <>
		// 'done'; an abandoned job is not open either.
		`DROP INDEX IF EXISTS keyctl_reencrypt_jobs_open`,
		`CREATE UNIQUE INDEX IF NOT EXISTS keyctl_reencrypt_jobs_open2 ON keyctl_reencrypt_jobs (tbl) WHERE state IN ('new-dek', 'running')`,
		`CREATE TABLE IF NOT EXISTS keyctl_reencrypt_chunks (
			job_id BIGINT NOT NULL,
			chunk INTEGER NOT NULL,
			lo BIGINT NOT NULL,
			hi BIGINT NOT NULL,
			state TEXT NOT NULL,
			lease_owner TEXT,
			lease_until BIGINT,
			checkpoint BIGINT,
			PRIMARY KEY (job_id, chunk))`,
	}
}

// migrate creates the job tables if needed. Concurrent first runs may race
// on CREATE in PostgreSQL: an advisory lock serialises them.
func (db *DB) migrate(ctx context.Context) error {
	db.mu.Lock()
	done := db.migrated
	db.mu.Unlock()
	if done {
		return nil
	}
	tx, err := db.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: job tables: %w", db.where, err)
	}
	defer tx.Rollback()
	if db.d == postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(7239001)`); err != nil {
			return fmt.Errorf("%s: job tables: %w", db.where, err)
		}
	}
	// Schema 1 had no column moved (the DEKs a job moved values from).
	add := `ALTER TABLE keyctl_reencrypt_jobs ADD COLUMN IF NOT EXISTS moved TEXT`
	if db.d == sqlite {
		var n int
		err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM pragma_table_info('keyctl_reencrypt_jobs') WHERE name = 'moved'`).Scan(&n)
		if err != nil {
			return fmt.Errorf("%s: job tables: %w", db.where, err)
		}
		add = ""
		if n == 0 {
			var tables int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'keyctl_reencrypt_jobs'`).Scan(&tables); err != nil {
				return fmt.Errorf("%s: job tables: %w", db.where, err)
			}
			if tables > 0 {
				add = `ALTER TABLE keyctl_reencrypt_jobs ADD COLUMN moved TEXT`
			}
		}
	}
	qs := schema[db.d]
	if add != "" {
		qs = append(qs[:1:1], append([]string{add}, qs[1:]...)...)
	}
	for _, q := range qs {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: job tables: %w", db.where, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: job tables: %w", db.where, err)
	}
	db.mu.Lock()
	db.migrated = true
	db.mu.Unlock()
	return nil
}

// nowMS is the database's clock in Unix milliseconds: leases use one clock
// for every worker, whatever machine it runs on.
func (db *DB) nowMS() string {
	if db.d == postgres {
		return `(extract(epoch from clock_timestamp()) * 1000)::bigint`
	}
	return `CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)`
}

// Job is a re-encryption job recorded in keyctl_reencrypt_jobs.
type Job struct {
	ID    int64
	Spec  Spec
	AAD   string
	State string
	// PrevDEK is the keyset's primary DEK when the job was created: while
	// the job is in state JobNewDEK, a keyset whose primary is still PrevDEK
	// has not got the job's new DEK yet.
	PrevDEK uint32
	// TargetDEK is the DEK values are moved onto; 0 in state JobNewDEK.
	TargetDEK uint32
	Created   time.Time

	t *Table
}

// Table returns the job's table.
func (j *Job) Table() *Table { return j.t }

const jobCols = `id, key_col, cols, aad, state, prev_dek, target_dek, created`

func (t *Table) readJob(ctx context.Context, q string, args ...any) (*Job, error) {
	var (
		j             Job
		key, cols     string
		prev, created int64
		target        sql.NullInt64
	)
	err := t.db.db.QueryRowContext(ctx, q, args...).Scan(&j.ID, &key, &cols, &j.AAD, &j.State, &prev, &target, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%s: table %s: %w", t.db.where, t.spec.Table, ErrNoJob)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: job table: %w", t.db.where, err)
	}
	j.Spec = Spec{Table: t.spec.Table, Key: key, Columns: strings.Split(cols, ",")}
	j.PrevDEK = uint32(prev)
	j.TargetDEK = uint32(target.Int64)
	j.Created = time.Unix(created, 0).UTC()
	j.t = t
	return &j, nil
}

// OpenJob returns the unfinished job on t's table, or an error wrapping
// ErrNoJob. A job on other columns or another key column than t's is an
// error wrapping core.ErrFailedPrecondition (finish it first).
func (t *Table) OpenJob(ctx context.Context) (*Job, error) {
	if err := t.db.migrate(ctx); err != nil {
		return nil, err
	}
	j, err := t.readJob(ctx, `SELECT `+jobCols+` FROM keyctl_reencrypt_jobs WHERE tbl = `+t.db.ph(1)+` AND state IN `+openStates, t.spec.Table)
	if err != nil {
		return nil, err
	}
	if j.Spec.Key != t.spec.Key || j.Spec.colsKey() != t.spec.colsKey() {
		return nil, fmt.Errorf("%s: table %s has an unfinished job (%d) on key %s and columns %s, not %s and %s; finish it first: %w",
			t.db.where, t.spec.Table, j.ID, j.Spec.Key, j.Spec.colsKey(), t.spec.Key, t.spec.colsKey(), core.ErrFailedPrecondition)
	}
	j.Spec = t.spec
	return j, nil
}

// LastJob returns the most recent job on t's table in any state, or an
// error wrapping ErrNoJob.
func (t *Table) LastJob(ctx context.Context) (*Job, error) {
	if err := t.db.migrate(ctx); err != nil {
		return nil, err
	}
	return t.readJob(ctx, `SELECT `+jobCols+` FROM keyctl_reencrypt_jobs WHERE tbl = `+t.db.ph(1)+` ORDER BY id DESC LIMIT 1`, t.spec.Table)
}

// JobOptions configure CreateJob.
type JobOptions struct {
	// AAD is the associated-data format (core.ParseADTemplate), recorded so
	// that a resumed run uses the same.
	AAD string
	// PrevDEK is the keyset's primary DEK now (see Job.PrevDEK).
	PrevDEK uint32
	// TargetDEK, if not 0, is recorded at once and the job starts in state
	// JobRunning (a re-encryption onto the current primary, no new DEK).
	TargetDEK uint32
	// ChunkKeys is the key span of a chunk (10000 if 0); there are at most
	// MaxChunks chunks.
	ChunkKeys int64
}

// MaxChunks bounds the number of chunks of a job.
const MaxChunks = 4096

// CreateJob records a new job on t's table with its chunks, which cover
// every possible key (rows inserted later fall in the first or last
// chunk). If another process created an unfinished job on the table first,
// that job is returned with created false.
func (t *Table) CreateJob(ctx context.Context, o JobOptions) (j *Job, created bool, err error) {
	if err := t.db.migrate(ctx); err != nil {
		return nil, false, err
	}
	if o.ChunkKeys <= 0 {
		o.ChunkKeys = 10000
	}
	lo, hi, ok, err := t.Bounds(ctx)
	if err != nil {
		return nil, false, err
	}
	bounds := splitRange(lo, hi, ok, o.ChunkKeys)
	state := JobNewDEK
	var target any
	if o.TargetDEK != 0 {
		state = JobRunning
		target = int64(o.TargetDEK)
	}
	tx, err := t.db.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, false, fmt.Errorf("%s: job table: %w", t.db.where, err)
	}
	defer tx.Rollback()
	ph := t.db.ph
	var id int64
	err = tx.QueryRowContext(ctx, `INSERT INTO keyctl_reencrypt_jobs (tbl, key_col, cols, aad, prev_dek, target_dek, state, created)
		VALUES (`+ph(1)+`, `+ph(2)+`, `+ph(3)+`, `+ph(4)+`, `+ph(5)+`, `+ph(6)+`, `+ph(7)+`, `+ph(8)+`) RETURNING id`,
		t.spec.Table, t.spec.Key, t.spec.colsKey(), o.AAD, int64(o.PrevDEK), target, state, time.Now().Unix()).Scan(&id)
	if err != nil {
		tx.Rollback()
		if existing, err2 := t.OpenJob(ctx); err2 == nil {
			return existing, false, nil // lost the race to another process
		}
		return nil, false, fmt.Errorf("%s: creating a job on table %s: %w", t.db.where, t.spec.Table, err)
	}
	st, err := tx.PrepareContext(ctx, `INSERT INTO keyctl_reencrypt_chunks (job_id, chunk, lo, hi, state) VALUES (`+ph(1)+`, `+ph(2)+`, `+ph(3)+`, `+ph(4)+`, 'pending')`)
	if err != nil {
		return nil, false, fmt.Errorf("%s: chunk table: %w", t.db.where, err)
	}
	defer st.Close()
	for i, b := range bounds {
		if _, err := st.ExecContext(ctx, id, i, b[0], b[1]); err != nil {
			return nil, false, fmt.Errorf("%s: chunk table: %w", t.db.where, err)
		}
	}
	if err := tx.Commit(); err != nil {
		if existing, err2 := t.OpenJob(ctx); err2 == nil {
			return existing, false, nil
		}
		return nil, false, fmt.Errorf("%s: creating a job on table %s: %w", t.db.where, t.spec.Table, err)
	}
	j, err = t.OpenJob(ctx)
	if err != nil {
		return nil, false, err
	}
	return j, j.ID == id, nil
}

// splitRange splits the key space into chunks of about span keys over
// [lo, hi], the first starting at the smallest int64 and the last ending
// at the largest.
func splitRange(lo, hi int64, ok bool, span int64) [][2]int64 {
	if !ok || lo == hi {
		return [][2]int64{{math.MinInt64, math.MaxInt64}}
	}
	width := uint64(hi) - uint64(lo) // keys - 1; no overflow in uint64
	n := width / uint64(span)
	if n >= MaxChunks {
		n = MaxChunks
	} else {
		n++
	}
	step := width/n + 1
	out := make([][2]int64, 0, n)
	start := int64(math.MinInt64)
	for i := uint64(1); i < n; i++ {
		// Offsets from lo, in uint64: i*step-1 < width keeps the end
		// below hi, so lo+off cannot pass math.MaxInt64 (the rounding up
		// of step could, for a range near the top, without this stop).
		off := i*step - 1
		if off >= width {
			break
		}
		end := int64(uint64(lo) + off)
		out = append(out, [2]int64{start, end})
		start = end + 1
	}
	return append(out, [2]int64{start, math.MaxInt64})
}

// SetTarget records the job's target DEK and moves it to JobRunning. It
// is idempotent: recording the same id again is not an error; another id
// is (core.ErrConflict).
func (j *Job) SetTarget(ctx context.Context, id uint32) error {
	db := j.t.db
	_, err := db.db.ExecContext(ctx, `UPDATE keyctl_reencrypt_jobs SET target_dek = `+db.ph(1)+`, state = '`+JobRunning+`' WHERE id = `+db.ph(2)+` AND state = '`+JobNewDEK+`'`, int64(id), j.ID)
	if err != nil {
		return fmt.Errorf("%s: job %d: %w", db.where, j.ID, err)
	}
	var target sql.NullInt64
	if err := db.db.QueryRowContext(ctx, `SELECT target_dek FROM keyctl_reencrypt_jobs WHERE id = `+db.ph(1), j.ID).Scan(&target); err != nil {
		return fmt.Errorf("%s: job %d: %w", db.where, j.ID, err)
	}
	if uint32(target.Int64) != id {
		return fmt.Errorf("%s: job %d already targets DEK %08x, not %08x: %w", db.where, j.ID, uint32(target.Int64), id, core.ErrConflict)
	}
	j.TargetDEK, j.State = id, JobRunning
	return nil
}

// ChunkCounts counts a job's chunks by state.
type ChunkCounts struct {
	Total, Pending, Running, Done int
	// Live are the running chunks whose lease has not expired.
	Live int
}

// Counts counts the job's chunks by state.
func (j *Job) Counts(ctx context.Context) (ChunkCounts, error) {
	db := j.t.db
	var c ChunkCounts
	rows, err := db.db.QueryContext(ctx, `SELECT state, COALESCE(lease_until, 0) > `+db.nowMS()+` FROM keyctl_reencrypt_chunks WHERE job_id = `+db.ph(1), j.ID)
	if err != nil {
		return c, fmt.Errorf("%s: job %d: %w", db.where, j.ID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		var live bool
		if err := rows.Scan(&s, &live); err != nil {
			return c, fmt.Errorf("%s: job %d: %w", db.where, j.ID, err)
		}
		c.Total++
		switch s {
		case chunkPending:
			c.Pending++
		case chunkRunning:
			c.Running++
			if live {
				c.Live++
			}
		case chunkDone:
			c.Done++
		}
	}
	return c, rows.Err()
}

// Finish marks the job done if every chunk is done, and reports whether it
// is.
func (j *Job) Finish(ctx context.Context) (bool, error) {
	c, err := j.Counts(ctx)
	if err != nil {
		return false, err
	}
	if c.Done != c.Total {
		return false, nil
	}
	db := j.t.db
	if _, err := db.db.ExecContext(ctx, `UPDATE keyctl_reencrypt_jobs SET state = 'done', finished = `+db.ph(1)+` WHERE id = `+db.ph(2)+` AND state IN `+openStates, time.Now().Unix(), j.ID); err != nil {
		return false, fmt.Errorf("%s: job %d: %w", db.where, j.ID, err)
	}
	j.State = JobDone
	return true, nil
}

// Chunk is a leased key range [Lo, Hi] of a job. It is the
// core.ReencryptSource a worker runs the engine on: its Apply commits the
// batch, the checkpoint and a renewed lease in one transaction, and fails
// with core.ErrLeaseLost (storing nothing) once another worker has taken
// the chunk over.
type Chunk struct {
	N          int
	Lo, Hi     int64
	Checkpoint core.Cursor

	job   *Job
	owner string
	lease time.Duration
}

// Claim leases the first chunk of the job, in key order, that is pending,
// or running with an expired lease, or running under owner (a restarted
// process of the same owner), and returns it with its checkpoint. In
// PostgreSQL it uses SELECT ... FOR UPDATE SKIP LOCKED, so workers never
// wait on each other; SQLite serialises claims with its write lock. Errors
// wrap ErrNoChunk when nothing can be claimed now.
func (j *Job) Claim(ctx context.Context, owner string, lease time.Duration) (*Chunk, error) {
	db := j.t.db
	tx, err := db.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: job %d: claiming a chunk: %w", db.where, j.ID, err)
	}
	defer tx.Rollback()
	var state string
	if err := tx.QueryRowContext(ctx, `SELECT state FROM keyctl_reencrypt_jobs WHERE id = `+db.ph(1), j.ID).Scan(&state); err != nil {
		return nil, fmt.Errorf("%s: job %d: claiming a chunk: %w", db.where, j.ID, err)
	}
	if state == JobAbandoned {
		return nil, fmt.Errorf("%s: job %d was abandoned: %w", db.where, j.ID, core.ErrFailedPrecondition)
	}
	q := `SELECT chunk, lo, hi, checkpoint FROM keyctl_reencrypt_chunks
		WHERE job_id = ` + db.ph(1) + ` AND (state = 'pending' OR (state = 'running' AND (lease_until < ` + db.nowMS() + ` OR lease_owner = ` + db.ph(2) + `)))
		ORDER BY chunk LIMIT 1`
	if db.d == postgres {
		q += ` FOR UPDATE SKIP LOCKED`
	}
	c := &Chunk{job: j, owner: owner, lease: lease}
	var cp sql.NullInt64
	err = tx.QueryRowContext(ctx, q, j.ID, owner).Scan(&c.N, &c.Lo, &c.Hi, &cp)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("job %d: %w", j.ID, ErrNoChunk)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: job %d: claiming a chunk: %w", db.where, j.ID, err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE keyctl_reencrypt_chunks SET state = 'running', lease_owner = `+db.ph(1)+`, lease_until = `+db.nowMS()+` + `+db.ph(2)+`
		WHERE job_id = `+db.ph(3)+` AND chunk = `+db.ph(4), owner, lease.Milliseconds(), j.ID, c.N); err != nil {
		return nil, fmt.Errorf("%s: job %d: claiming a chunk: %w", db.where, j.ID, err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("%s: job %d: claiming a chunk: %w", db.where, j.ID, err)
	}
	c.Checkpoint = core.Cursor{Set: cp.Valid, Key: cp.Int64}
	return c, nil
}

// Columns implements core.ReencryptSource.
func (c *Chunk) Columns() []string { return c.job.t.spec.Columns }

// Scan implements core.ReencryptSource over [Lo, Hi].
func (c *Chunk) Scan(ctx context.Context, after core.Cursor, limit int) ([]core.ReencryptRow, error) {
	return c.job.t.scan(ctx, c.job.t.db.db, c.Lo, c.Hi, after, limit)
}

// Reread implements core.ReencryptSource.
func (c *Chunk) Reread(ctx context.Context, keys []int64) ([]core.ReencryptRow, error) {
	return c.job.t.reread(ctx, keys)
}

// applyAttempts is how many times Apply runs a batch's transaction that
// failed on a deadlock, a serialization failure or a busy database.
var applyAttempts = 5

// Apply implements core.ReencryptSource: the swaps, the checkpoint and a
// renewed lease in one transaction. A transaction that fails on a
// PostgreSQL deadlock or serialization failure, or on a busy SQLite
// database, was rolled back as a whole: it is run again, a few times, with
// a short back-off, instead of ending the run.
func (c *Chunk) Apply(ctx context.Context, updates []core.RowUpdate, checkpoint core.Cursor) ([]bool, error) {
	for attempt := 1; ; attempt++ {
		swapped, err := c.applyOnce(ctx, updates, checkpoint)
		if err == nil || attempt >= applyAttempts || !retryable(err) || ctx.Err() != nil {
			return swapped, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(time.Duration(attempt*attempt) * 20 * time.Millisecond):
		}
	}
}

func (c *Chunk) applyOnce(ctx context.Context, updates []core.RowUpdate, checkpoint core.Cursor) ([]bool, error) {
	t := c.job.t
	db := t.db
	tx, err := db.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: table %s: %w", db.where, t.spec.Table, err)
	}
	defer tx.Rollback()
	// The lease first: in PostgreSQL this locks the chunk row, so a worker
	// taking the chunk over waits for this batch (or skips it).
	res, err := tx.ExecContext(ctx, `UPDATE keyctl_reencrypt_chunks SET checkpoint = `+db.ph(1)+`, lease_until = `+db.nowMS()+` + `+db.ph(2)+`
		WHERE job_id = `+db.ph(3)+` AND chunk = `+db.ph(4)+` AND lease_owner = `+db.ph(5)+` AND state = 'running'`,
		checkpoint.Key, c.lease.Milliseconds(), c.job.ID, c.N, c.owner)
	if err != nil {
		return nil, fmt.Errorf("%s: job %d chunk %d: checkpoint: %w", db.where, c.job.ID, c.N, err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return nil, fmt.Errorf("%s: job %d chunk %d: %w", db.where, c.job.ID, c.N, core.ErrLeaseLost)
	}
	swapped, err := t.applyUpdates(ctx, tx, updates)
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("%s: table %s: commit: %w", db.where, t.spec.Table, err)
	}
	c.Checkpoint = checkpoint
	return swapped, nil
}

// Done marks the chunk done (if this worker still holds it).
func (c *Chunk) Done(ctx context.Context) error {
	db := c.job.t.db
	res, err := db.db.ExecContext(ctx, `UPDATE keyctl_reencrypt_chunks SET state = 'done', lease_until = NULL
		WHERE job_id = `+db.ph(1)+` AND chunk = `+db.ph(2)+` AND lease_owner = `+db.ph(3)+` AND state = 'running'`, c.job.ID, c.N, c.owner)
	if err != nil {
		return fmt.Errorf("%s: job %d chunk %d: %w", db.where, c.job.ID, c.N, err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return fmt.Errorf("%s: job %d chunk %d: %w", db.where, c.job.ID, c.N, core.ErrLeaseLost)
	}
	return nil
}

// ProcessOptions configure Job.Process.
type ProcessOptions struct {
	// Owner names this process in leases: a fixed name in single-process
	// mode (so a rerun takes its chunks back at once), a unique one per
	// worker.
	Owner string
	// Lease is how long a claimed chunk stays this process's without a
	// committed batch (60 s if zero).
	Lease time.Duration
	// Poll is how often to look again for a chunk while other workers hold
	// the remaining ones (1 s if zero).
	Poll time.Duration
	// OnChunk, if set, is called when a chunk is claimed.
	OnChunk func(c *Chunk)
}

// Process claims the job's chunks one after another and runs r on each
// from its checkpoint, until every chunk is done; it waits while other
// workers hold the remaining chunks, and takes over a chunk whose lease has
// expired. It adds to st. On return without error the job is done.
func (j *Job) Process(ctx context.Context, r *core.Reencrypter, o ProcessOptions, st *core.ReencryptStats) (*core.ReencryptStats, error) {
	if st == nil {
		st = &core.ReencryptStats{}
	}
	if j.TargetDEK == 0 || r.Target() != j.TargetDEK {
		return st, fmt.Errorf("job %d targets DEK %08x but the cipher encrypts under %08x: %w", j.ID, j.TargetDEK, r.Target(), core.ErrFailedPrecondition)
	}
	if o.Lease <= 0 {
		o.Lease = time.Minute
	}
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	for {
		c, err := j.Claim(ctx, o.Owner, o.Lease)
		if errors.Is(err, ErrNoChunk) {
			done, err := j.Finish(ctx)
			if err != nil {
				return st, err
			}
			if done {
				return st, nil
			}
			select {
			case <-ctx.Done():
				return st, fmt.Errorf("job %d: %w", j.ID, ctx.Err())
			case <-time.After(o.Poll):
			}
			continue
		}
		if err != nil {
			return st, err
		}
		if o.OnChunk != nil {
			o.OnChunk(c)
		}
		if _, err := r.Run(ctx, c, c.Checkpoint, st); err != nil {
			if errors.Is(err, core.ErrLeaseLost) {
				continue
			}
			return st, fmt.Errorf("job %d chunk %d: %w", j.ID, c.N, err)
		}
		if err := c.Done(ctx); err != nil && !errors.Is(err, core.ErrLeaseLost) {
			return st, err
		}
		if err := j.recordMoved(ctx, st.Moved); err != nil {
			return st, err
		}
	}
}

// lockWait is how long LockSingle waits for the lock.
var lockWait = 5 * time.Second

// LockSingle takes the single-process lock of t's table: a session
// advisory lock in PostgreSQL (released when the process's connection
// closes, also when it is killed), a lock file next to the database in
// SQLite (released by the kernel when the process dies). It waits up to a
// few seconds, then fails with ErrBusy while another process holds it.
func (t *Table) LockSingle(ctx context.Context) (unlock func(), err error) {
	db := t.db
	if db.d == sqlite {
		lctx, cancel := context.WithTimeout(ctx, lockWait)
		defer cancel()
		unlock, err := store.LockFile(lctx, db.path+".keyctl-reencrypt-"+t.spec.Table) // + ".lock"
		if err != nil {
			if lctx.Err() != nil && ctx.Err() == nil {
				return nil, fmt.Errorf("%s: table %s: %w", db.where, t.spec.Table, ErrBusy)
			}
			return nil, fmt.Errorf("%s: table %s: lock: %w", db.where, t.spec.Table, err)
		}
		return unlock, nil
	}
	conn, err := db.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: lock: %w", db.where, err)
	}
	h := fnv.New64a()
	h.Write([]byte("keyctl-reencrypt:" + t.spec.Table))
	key := int64(h.Sum64())
	// A process that was killed holds the lock until its server backend
	// notices the closed connection, a moment later: wait a little.
	deadline := time.Now().Add(lockWait)
	for {
		var ok bool
		if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&ok); err != nil {
			conn.Close()
			return nil, fmt.Errorf("%s: lock: %w", db.where, err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			conn.Close()
			return nil, fmt.Errorf("%s: table %s: %w", db.where, t.spec.Table, ErrBusy)
		}
		select {
		case <-ctx.Done():
			conn.Close()
			return nil, fmt.Errorf("%s: lock: %w", db.where, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return func() {
		_, _ = conn.ExecContext(context.Background(), `SELECT pg_advisory_unlock($1)`, key)
		conn.Close()
	}, nil
}

// WorkerID returns a lease owner name unique to this process:
// host:pid:random.
func WorkerID() string {
	h, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s:%d:%x", h, os.Getpid(), b)
}

// Count returns the number of rows of the table.
func (t *Table) Count(ctx context.Context) (int64, error) {
	var n int64
	if err := t.db.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+quote(t.spec.Table)).Scan(&n); err != nil {
		return 0, fmt.Errorf("%s: table %s: %w", t.db.where, t.spec.Table, err)
	}
	return n, nil
}

// RowsDone returns the number of rows of the table that the job has
// committed: those in done chunks, and those up to the checkpoint of
// running ones. It is for progress reports: one index range count per
// chunk.
func (j *Job) RowsDone(ctx context.Context) (int64, error) {
	t := j.t
	k := quote(t.spec.Key)
	var n int64
	err := t.db.db.QueryRowContext(ctx, `SELECT COALESCE(SUM((SELECT COUNT(*) FROM `+quote(t.spec.Table)+` x
		WHERE x.`+k+` >= c.lo AND x.`+k+` <= (CASE WHEN c.state = 'done' THEN c.hi ELSE c.checkpoint END))), 0)
		FROM keyctl_reencrypt_chunks c WHERE c.job_id = `+t.db.ph(1)+` AND (c.state = 'done' OR c.checkpoint IS NOT NULL)`, j.ID).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("%s: job %d: %w", t.db.where, j.ID, err)
	}
	return n, nil
}

// ErrIncomplete is returned by CheckVerified when a verify pass cannot
// have seen every row of the table.
var ErrIncomplete = errors.New("the verify pass did not see every row")

// CheckVerified checks that a verify pass over the table that read
// verified rows saw all of them: no row has a NULL key or (SQLite, where a
// non-rowid INTEGER column can hold text) a key that is not an integer,
// which a scan in key order never reaches, and the table holds exactly
// verified rows now. Rows inserted or deleted during the pass also make it
// fail: run the pass again. Errors wrap ErrIncomplete and
// core.ErrFailedPrecondition.
func (t *Table) CheckVerified(ctx context.Context, verified int64) error {
	k := quote(t.spec.Key)
	q := `SELECT COUNT(*), COUNT(*) - COUNT(` + k + `) FROM ` + quote(t.spec.Table)
	if t.db.d == sqlite {
		q = `SELECT COUNT(*), COALESCE(SUM(typeof(` + k + `) <> 'integer'), 0) FROM ` + quote(t.spec.Table)
	}
	var n, bad int64
	if err := t.db.db.QueryRowContext(ctx, q).Scan(&n, &bad); err != nil {
		return fmt.Errorf("%s: table %s: %w", t.db.where, t.spec.Table, err)
	}
	if bad > 0 {
		return fmt.Errorf("%s: %d row(s) of table %s have a NULL or non-integer key %s, which a scan in key order does not reach: %w: %w",
			t.db.where, bad, t.spec.Table, t.spec.Key, ErrIncomplete, core.ErrFailedPrecondition)
	}
	if n != verified {
		return fmt.Errorf("%s: table %s has %d row(s) but the verify pass read %d (rows inserted or deleted meanwhile?): %w: %w",
			t.db.where, t.spec.Table, n, verified, ErrIncomplete, core.ErrFailedPrecondition)
	}
	return nil
}

// recordMoved adds the DEK ids of moved (core.ReencryptStats.Moved) to the
// job's record of the DEKs it moved values from (see ReplacedDEKs).
func (j *Job) recordMoved(ctx context.Context, moved map[uint32]int64) error {
	if len(moved) == 0 {
		return nil
	}
	db := j.t.db
	tx, err := db.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: job %d: %w", db.where, j.ID, err)
	}
	defer tx.Rollback()
	q := `SELECT moved FROM keyctl_reencrypt_jobs WHERE id = ` + db.ph(1)
	if db.d == postgres {
		q += ` FOR UPDATE`
	}
	var cur sql.NullString
	if err := tx.QueryRowContext(ctx, q, j.ID).Scan(&cur); err != nil {
		return fmt.Errorf("%s: job %d: %w", db.where, j.ID, err)
	}
	ids := parseDEKList(cur.String)
	n := len(ids)
	for id := range moved {
		if id != 0 && id != j.TargetDEK && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	if len(ids) == n {
		return nil
	}
	slices.Sort(ids)
	list := make([]string, len(ids))
	for i, id := range ids {
		list[i] = strconv.FormatUint(uint64(id), 10)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE keyctl_reencrypt_jobs SET moved = `+db.ph(1)+` WHERE id = `+db.ph(2), strings.Join(list, ","), j.ID); err != nil {
		return fmt.Errorf("%s: job %d: %w", db.where, j.ID, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: job %d: %w", db.where, j.ID, err)
	}
	return nil
}

func parseDEKList(s string) []uint32 {
	var ids []uint32
	for _, f := range strings.Split(s, ",") {
		if id, err := strconv.ParseUint(f, 10, 32); err == nil && id != 0 {
			ids = append(ids, uint32(id))
		}
	}
	return ids
}

// ReplacedDEKs returns the DEKs that the finished jobs on t's table onto
// target replaced: each job's prev_dek (the keyset's primary when it
// started) and the DEKs it moved values of these columns from. These are
// the DEKs keyctl reencrypt --retire-old may retire once a verify pass
// finds no value under them; target itself is never among them.
func (t *Table) ReplacedDEKs(ctx context.Context, target uint32) ([]uint32, error) {
	if err := t.db.migrate(ctx); err != nil {
		return nil, err
	}
	rows, err := t.db.db.QueryContext(ctx, `SELECT prev_dek, COALESCE(moved, '') FROM keyctl_reencrypt_jobs WHERE tbl = `+t.db.ph(1)+` AND state = '`+JobDone+`' AND target_dek = `+t.db.ph(2),
		t.spec.Table, int64(target))
	if err != nil {
		return nil, fmt.Errorf("%s: job table: %w", t.db.where, err)
	}
	defer rows.Close()
	var out []uint32
	for rows.Next() {
		var prev int64
		var moved string
		if err := rows.Scan(&prev, &moved); err != nil {
			return nil, fmt.Errorf("%s: job table: %w", t.db.where, err)
		}
		for _, id := range append(parseDEKList(moved), uint32(prev)) {
			if id != 0 && id != target && !slices.Contains(out, id) {
				out = append(out, id)
			}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: job table: %w", t.db.where, err)
	}
	slices.Sort(out)
	return out, nil
}

// Abandon marks the job abandoned, so that it no longer blocks a new job
// on the table (for a job whose target DEK is no longer the keyset's
// primary because another rotation happened meanwhile). It is safe: the
// job only ever moved values between DEKs that stay in the keyset, and
// values it did not reach are under the DEK they were. Workers still on the
// job finish their current batch and stop at their next claim.
func (j *Job) Abandon(ctx context.Context) error {
	db := j.t.db
	res, err := db.db.ExecContext(ctx, `UPDATE keyctl_reencrypt_jobs SET state = '`+JobAbandoned+`', finished = `+db.ph(1)+` WHERE id = `+db.ph(2)+` AND state IN `+openStates, time.Now().Unix(), j.ID)
	if err != nil {
		return fmt.Errorf("%s: job %d: %w", db.where, j.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return fmt.Errorf("%s: job %d is no longer open: %w", db.where, j.ID, ErrNoJob)
	}
	j.State = JobAbandoned
	return nil
}
