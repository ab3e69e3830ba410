package main

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/store/sqltable"
)

// reencryptFlags are the flags of keyctl reencrypt.
type reencryptFlags struct {
	sqlite, dbEnv      string
	table, key         string
	columns            []string
	aad                string
	batch              int
	chunkKeys          int64
	lease              time.Duration
	dryRun, verify     bool
	worker, retireOld  bool
	toPrimary, newDEK  bool
	abandonJob         bool
	progress           string
	progressInterval   time.Duration
	maxFailuresPrinted int
}

// reencryptDEKCount is one line of a per-DEK count.
type reencryptDEKCount struct {
	Column string `json:"column"`
	DEKID  string `json:"dek_id"` // "invalid" for a value whose header does not parse
	State  string `json:"state"`  // keyset state, "unknown" if not in the keyset
	Values int64  `json:"values"`
}

// reencryptResult is the JSON (and summary) of a run.
type reencryptResult struct {
	Mode        string               `json:"mode"` // run, worker, dry-run, verify
	Database    string               `json:"database"`
	Table       string               `json:"table"`
	Columns     []string             `json:"columns"`
	Job         int64                `json:"job,omitempty"`
	TargetDEK   string               `json:"target_dek,omitempty"`
	NewDEK      bool                 `json:"new_dek,omitempty"`
	Stats       *core.ReencryptStats `json:"stats,omitempty"`
	Verify      []reencryptDEKCount  `json:"verify,omitempty"`
	WouldChange []reencryptDEKCount  `json:"would_reencrypt,omitempty"`
	OldValues   int64                `json:"old_values"`
	Retired     []string             `json:"retired,omitempty"`
	KeptOld     []string             `json:"kept_decrypt_only,omitempty"` // decrypt-only DEKs --retire-old left alone
	Incomplete  string               `json:"verify_incomplete,omitempty"` // why the verify pass may have missed rows
	Elapsed     string               `json:"elapsed"`
}

const reencryptLong = `Re-encrypt the encrypted columns of a database table under a new DEK (DEK
rotation), crash-safely. Unlike 'keyctl rewrap' (KEK rotation: the DEK is
re-wrapped and the data is untouched), every value is decrypted and
encrypted again.

A run:
  1. records a job in the database (table keyctl_reencrypt_jobs), then adds a
     new primary DEK to the configured keyset (the old one stays
     decrypt-only) and records it in the job, before any row is touched;
  2. reads the rows in primary-key order, in batches (--batch); a value not
     under the new DEK is decrypted and encrypted under it with the same
     associated data (--aad), and stored only if the row still holds the
     value read (compare-and-swap): application writes are never
     overwritten. Each batch and its checkpoint commit in one transaction;
  3. counts the values per DEK (the verify pass) and, with --retire-old,
     retires the DEK this rotation replaced once no value of the given
     columns uses it. Other tables using the same keyset must be verified
     first: decrypt-only DEKs that no rotation of this table replaced are
     left alone.

Killed or interrupted, it loses nothing: run the same command again and it
resumes the unfinished job from its checkpoint, with the same new DEK. Once
the table's last job is done and its DEK is still the primary, the same
command re-encrypts onto that DEK what remains (values applications wrote
under an old DEK meanwhile) and verifies: it never starts a second rotation
unless --new-dek is given. --to-primary re-encrypts onto the keyset's
current primary without adding a DEK (after 'keyctl keyset rotate').
A job whose target is no longer the primary (another rotation happened in
the middle) is refused; --abandon-job gives it up (no row changes: every
value is under a DEK of the keyset), then run again.

--key must be the table's integer primary key (INTEGER or BIGINT;
PostgreSQL also accepts a NOT NULL column with a unique index). Columns hold
field ciphertexts in binary (BLOB, BYTEA) or text form (TEXT); NULLs and
empty values are skipped. The database is a SQLite file (--sqlite PATH) or PostgreSQL, whose
URL is read from an environment variable (--db-env VAR; never put a password
on the command line).

--worker (PostgreSQL only) lets several processes, on one or more machines,
share one job: the key range is split into chunks that workers claim with
SELECT ... FOR UPDATE SKIP LOCKED and a lease (--lease); a chunk whose worker
died is taken over, from its checkpoint, when the lease expires. A worker
that starts after the job onto the current primary is done does nothing.

--aad is the associated-data format: literal text with {table}, {column} and
{key} (the row key in decimal); default "{table}.{column}:{key}", which gives
"users.email:42". It must be the one the application encrypts with. {key} is
required, {column} too with several --column (else values could be swapped
between columns of a row); without {table}, a value copied to the same
column and key of another table still decrypts.

Exit status: 0 done (the summary says if values remain under an old DEK);
1 failure (database or vault unreachable, values that fail to decrypt);
2 usage error, bad input, or --retire-old refused. See docs/reencrypt.md.`

func (a *app) reencryptCommand() *cobra.Command {
	var f reencryptFlags
	c := &cobra.Command{
		Use:   "reencrypt --table T --key K --column C [--column C...] (--sqlite PATH | --db-env VAR)",
		Short: "Re-encrypt database columns under a new DEK (DEK rotation), resumably",
		Long:  reencryptLong,
		Example: `  keyctl reencrypt --sqlite app.db --table users --key id --column email --dry-run
  keyctl reencrypt --sqlite app.db --table users --key id --column email
  DB_URL=postgres://app@db/app keyctl reencrypt --db-env DB_URL --table users --key id --column email --worker
  keyctl reencrypt --sqlite app.db --table users --key id --column email --verify --retire-old`,
		Args: cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			return a.reencrypt(cmd, &f)
		}),
	}
	fl := c.Flags()
	fl.StringVar(&f.sqlite, "sqlite", "", "SQLite database file")
	fl.StringVar(&f.dbEnv, "db-env", "", "environment variable holding the PostgreSQL URL")
	fl.StringVar(&f.table, "table", "", "table to re-encrypt")
	fl.StringVar(&f.key, "key", "", "its integer primary-key column")
	fl.StringArrayVar(&f.columns, "column", nil, "encrypted column (repeatable)")
	fl.StringVar(&f.aad, "aad", "", `associated-data format (default "`+core.DefaultADFormat+`", or the unfinished job's)`)
	fl.IntVar(&f.batch, "batch", 1000, "rows per transaction")
	fl.Int64Var(&f.chunkKeys, "chunk-keys", 10000, "key span of a chunk, when a job is created")
	fl.DurationVar(&f.lease, "lease", time.Minute, "how long a claimed chunk is held without progress before another worker may take it")
	fl.BoolVar(&f.dryRun, "dry-run", false, "count the values per DEK that would be re-encrypted; change nothing")
	fl.BoolVar(&f.verify, "verify", false, "only count the values per DEK")
	fl.BoolVar(&f.worker, "worker", false, "join the job with other workers (PostgreSQL)")
	fl.BoolVar(&f.retireOld, "retire-old", false, "retire the DEK(s) the rotations of this table replaced once no value of the given columns uses them (other tables using the same keyset must be verified first)")
	fl.BoolVar(&f.toPrimary, "to-primary", false, "when no job is unfinished, re-encrypt onto the current primary DEK instead of adding a new one")
	fl.BoolVar(&f.newDEK, "new-dek", false, "start another rotation (a new DEK) although the last job on the table, onto the current primary, is done")
	fl.BoolVar(&f.abandonJob, "abandon-job", false, "give up the table's unfinished job (one whose target DEK is no longer the primary); changes no row")
	fl.StringVar(&f.progress, "progress", "auto", "progress report: "+strings.Join(progressModes, ", ")+" (auto: a bar on a terminal, log lines otherwise)")
	fl.DurationVar(&f.progressInterval, "progress-interval", 10*time.Second, "interval of progress log lines")
	fl.IntVar(&f.maxFailuresPrinted, "max-failures", 20, "failures printed on stderr (all are counted)")
	_ = fl.MarkHidden("max-failures")
	return c
}

func (a *app) reencrypt(cmd *cobra.Command, f *reencryptFlags) error {
	// Flags.
	switch {
	case f.table == "" || f.key == "" || len(f.columns) == 0:
		return usagef("reencrypt: --table, --key and at least one --column are required")
	case (f.sqlite == "") == (f.dbEnv == ""):
		return usagef("reencrypt: give exactly one of --sqlite PATH and --db-env VAR")
	case f.dryRun && f.verify:
		return usagef("reencrypt: --dry-run and --verify exclude each other")
	case f.dryRun && (f.retireOld || f.worker):
		return usagef("reencrypt: --dry-run changes nothing; it excludes --retire-old and --worker")
	case f.verify && f.worker:
		return usagef("reencrypt: --verify excludes --worker")
	case f.worker && f.sqlite != "":
		return withHint(usagef("reencrypt: --worker needs PostgreSQL (SQLite has no SELECT ... FOR UPDATE SKIP LOCKED)"),
			"run one keyctl reencrypt without --worker on a SQLite database")
	case f.batch < 1 || f.batch > 100000:
		return usagef("reencrypt: --batch %d: want 1 to 100000", f.batch)
	case f.lease < time.Second:
		return usagef("reencrypt: --lease %v: want at least 1s", f.lease)
	case f.chunkKeys < 1:
		return usagef("reencrypt: --chunk-keys must be positive")
	case f.newDEK && f.toPrimary:
		return usagef("reencrypt: --new-dek and --to-primary exclude each other")
	case f.newDEK && (f.dryRun || f.verify):
		return usagef("reencrypt: --new-dek starts a rotation; it excludes --dry-run and --verify")
	case f.abandonJob && (f.dryRun || f.verify || f.worker || f.retireOld || f.toPrimary || f.newDEK):
		return usagef("reencrypt: --abandon-job only gives up the unfinished job; it excludes the other mode flags")
	}
	spec := sqltable.Spec{Table: f.table, Key: f.key, Columns: f.columns}
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("reencrypt: %w", err)
	}
	if f.aad != "" {
		// Spaces are part of the associated data: trimming them would
		// silently form other bytes than the application's.
		if strings.TrimSpace(f.aad) != f.aad {
			return usagef("reencrypt: --aad %q starts or ends with white space, which would be part of the associated data; quote it exactly as the application forms it", f.aad)
		}
		if _, err := checkADTemplate(f.aad, f); err != nil {
			return err
		}
	}

	db, err := a.openReencryptDB(f)
	if err != nil {
		return err
	}
	defer db.Close()
	tbl, err := db.Table(a.ctx, spec)
	if err != nil {
		if errors.Is(err, sqltable.ErrNotInteger) {
			return withHint(usagef("reencrypt: %v", err), "keyctl reencrypt reads rows in key order and splits the key range into chunks; add an integer key column")
		}
		if errors.Is(err, sqltable.ErrNotKey) {
			return withHint(usagef("reencrypt: %v", err), "rows are read in key order, so the key must be unique and never NULL; give the integer primary key as --key")
		}
		return fmt.Errorf("reencrypt: %w", err)
	}
	if f.abandonJob {
		return a.reencryptAbandon(tbl)
	}
	start := time.Now()
	res := &reencryptResult{Database: db.String(), Table: f.table, Columns: f.columns}
	ks, _, err := a.loadKeyset()
	if err != nil {
		return err
	}

	switch {
	case f.verify:
		res.Mode = "verify"
		err = a.reencryptVerify(tbl, ks, f, res)
	case f.dryRun:
		res.Mode = "dry-run"
		err = a.reencryptDryRun(tbl, ks, f, res)
	default:
		res.Mode = "run"
		if f.worker {
			res.Mode = "worker"
		}
		err = a.reencryptRun(tbl, ks, f, res)
	}
	res.Elapsed = time.Since(start).Round(time.Millisecond).String()
	if res.Stats != nil {
		fails := res.Stats.Failures
		for i, fl := range fails {
			if i >= f.maxFailuresPrinted {
				fmt.Fprintf(a.stderr, "keyctl: reencrypt: %d more failure(s) not shown\n", len(fails)-i)
				break
			}
			fmt.Fprintf(a.stderr, "keyctl: reencrypt: row %d column %s: %s\n", fl.Key, fl.Column, oneLine(fl.Reason))
		}
	}
	if err != nil && res.Stats == nil && res.Verify == nil {
		return err
	}
	a.reencryptReport(res)
	if err != nil {
		return err
	}
	if res.Stats != nil && res.Stats.Failed > 0 && res.Mode != "verify" {
		return &exitStatus{code: exitFailure, msg: fmt.Sprintf("%d value(s) failed", res.Stats.Failed)}
	}
	return nil
}

// openReencryptDB opens the database named by --sqlite or --db-env.
func (a *app) openReencryptDB(f *reencryptFlags) (*sqltable.DB, error) {
	if f.sqlite != "" {
		if fi, err := os.Stat(f.sqlite); err != nil || !fi.Mode().IsRegular() {
			return nil, usagef("reencrypt: --sqlite %s: no such database file", f.sqlite)
		}
		db, err := sqltable.OpenSQLite(a.ctx, f.sqlite)
		if err != nil {
			return nil, fmt.Errorf("reencrypt: %w", err)
		}
		return db, nil
	}
	url, ok := a.getenv(f.dbEnv)
	if !ok || url == "" {
		return nil, withHint(usagef("reencrypt: environment variable %s is not set or empty", f.dbEnv),
			fmt.Sprintf("export %s=postgres://USER@HOST/DB", f.dbEnv))
	}
	// The URL may carry a password: provider plugins, third-party ones
	// included, are started later (a.keyring) and inherit the process's
	// environment, so the variable leaves it now. keyctl itself still finds
	// it (the keyset block may name the same variable).
	_ = os.Unsetenv(f.dbEnv)
	getenv, name := a.getenv, f.dbEnv
	a.getenv = func(k string) (string, bool) {
		if k == name {
			return url, true
		}
		return getenv(k)
	}
	db, err := sqltable.OpenPostgres(a.ctx, url)
	if err != nil {
		return nil, fmt.Errorf("reencrypt: %w", err)
	}
	return db, nil
}

// adTemplate returns the associated-data template: --aad, else the job's,
// else the default. An --aad that differs from the job's is refused.
func adTemplate(f *reencryptFlags, job *sqltable.Job) (*core.ADTemplate, error) {
	format := f.aad
	if job != nil && job.AAD != "" {
		if format != "" && format != job.AAD {
			return nil, withHint(usagef("reencrypt: --aad %q differs from the unfinished job's %q", format, job.AAD),
				"leave --aad out to resume with the job's format")
		}
		format = job.AAD
	}
	if format == "" {
		format = core.DefaultADFormat
	}
	return checkADTemplate(format, f)
}

// checkADTemplate parses format for f's table and requires {column} when
// several columns are re-encrypted: without it their values could be
// swapped within a row and still decrypt.
func checkADTemplate(format string, f *reencryptFlags) (*core.ADTemplate, error) {
	t, err := core.ParseADTemplate(format, f.table)
	if err != nil {
		return nil, fmt.Errorf("reencrypt: --aad: %w", err)
	}
	if len(f.columns) > 1 && !t.BindsColumn() {
		return nil, withHint(usagef("reencrypt: --aad %q has no {column}, so the %d columns' values could be swapped within a row and still decrypt", format, len(f.columns)),
			"re-encrypt each column in its own run if the application really forms the associated data without the column name")
	}
	return t, nil
}

func dekState(ks *core.Keyset, id uint32) string {
	if e, err := ks.Entry(id); err == nil {
		return string(e.State)
	}
	return "unknown"
}

// dekCounts flattens a ByDEK map, sorted by column then id.
func dekCounts(ks *core.Keyset, by map[string]map[uint32]int64, cols []string) []reencryptDEKCount {
	var out []reencryptDEKCount
	for _, c := range cols {
		ids := make([]uint32, 0, len(by[c]))
		for id := range by[c] {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
		for _, id := range ids {
			d := reencryptDEKCount{Column: c, DEKID: fmt.Sprintf("%08x", id), State: dekState(ks, id), Values: by[c][id]}
			if id == 0 {
				d.DEKID, d.State = "invalid", "-"
			}
			out = append(out, d)
		}
	}
	return out
}

func (a *app) reencryptVerify(tbl *sqltable.Table, ks *core.Keyset, f *reencryptFlags, res *reencryptResult) error {
	p, err := a.newProgress(f.progress, "verify", "rows", 0, f.progressInterval)
	if err != nil {
		return err
	}
	if n, err := tbl.Count(a.ctx); err == nil {
		p.total = int(n)
	}
	st, err := core.Verify(a.ctx, tbl.Reader(), max(f.batch, 1000), func(st *core.ReencryptStats, _ core.Cursor) { p.update(int(st.Rows), "") })
	p.finish(int(st.Rows), "")
	if err != nil {
		return fmt.Errorf("reencrypt: %w", err)
	}
	primary, err := ks.Primary()
	if err != nil {
		return err
	}
	res.TargetDEK = fmt.Sprintf("%08x", primary.ID)
	res.Verify = dekCounts(ks, st.ByDEK, f.columns)
	res.OldValues = st.OldValues(primary.ID)
	complete := a.checkVerified(tbl, st, res)
	if f.retireOld {
		replaced, err := tbl.ReplacedDEKs(a.ctx, primary.ID)
		if err != nil {
			return fmt.Errorf("reencrypt: %w", err)
		}
		return a.retireOld(ks, primary.ID, st, complete, replaced, res)
	}
	return nil
}

// reencryptAbandon gives up the table's unfinished job.
func (a *app) reencryptAbandon(tbl *sqltable.Table) error {
	job, err := tbl.OpenJob(a.ctx)
	if errors.Is(err, sqltable.ErrNoJob) {
		return usagef("reencrypt: --abandon-job: table %s has no unfinished job", tbl.Spec().Table)
	}
	if err != nil {
		return fmt.Errorf("reencrypt: --abandon-job: %w", err)
	}
	if err := job.Abandon(a.ctx); err != nil {
		return fmt.Errorf("reencrypt: --abandon-job: %w", err)
	}
	target := "no DEK yet"
	if job.TargetDEK != 0 {
		target = fmt.Sprintf("DEK %08x", job.TargetDEK)
	}
	a.printf("job %d on table %s (onto %s) abandoned; every value is still under a DEK of the keyset\n", job.ID, tbl.Spec().Table, target)
	return nil
}

// checkVerified checks that the verify pass st saw every row of tbl (see
// sqltable.Table.CheckVerified); when it did not, it warns and records why
// in res, and returns the error that refuses --retire-old.
func (a *app) checkVerified(tbl *sqltable.Table, st *core.ReencryptStats, res *reencryptResult) error {
	err := tbl.CheckVerified(a.ctx, st.Rows)
	if err != nil {
		res.Incomplete = oneLine(err.Error())
		fmt.Fprintf(a.stderr, "keyctl: reencrypt: warning: %s\n", res.Incomplete)
	}
	return err
}

// retireOld retires the decrypt-only DEKs among replaced (the DEKs the
// rotations of this table replaced) if the verify pass st saw every row
// (complete is nil) and found no value under a DEK other than target.
// Other decrypt-only DEKs of the keyset may encrypt other tables: they are
// left alone and listed in res.KeptOld.
func (a *app) retireOld(ks *core.Keyset, target uint32, st *core.ReencryptStats, complete error, replaced []uint32, res *reencryptResult) error {
	if complete != nil {
		return withHint(fmt.Errorf("reencrypt: --retire-old refused: %w", complete),
			"give the table's integer primary key as --key, fix the rows it names, or run again when no rows are being inserted or deleted")
	}
	if n := st.OldValues(target); n > 0 {
		return withHint(fmt.Errorf("reencrypt: --retire-old refused: %d value(s) are not under the primary DEK %08x: %w", n, target, core.ErrFailedPrecondition),
			"run keyctl reencrypt again (with --to-primary once the job is done) after every application has reloaded the keyset")
	}
	if p, err := ks.Primary(); err != nil || p.ID != target {
		return fmt.Errorf("reencrypt: --retire-old refused: the keyset's primary DEK is no longer %08x: %w", target, core.ErrFailedPrecondition)
	}
	var retired, kept []string
	_, err := a.updateKeyset(false, func(ks *core.Keyset) error {
		retired = retired[:0]
		p, err := ks.Primary()
		if err != nil {
			return err
		}
		if p.ID != target {
			return fmt.Errorf("reencrypt: --retire-old refused: the keyset's primary DEK changed to %08x: %w", p.ID, core.ErrFailedPrecondition)
		}
		kept = kept[:0]
		for i := range ks.DEKs {
			if ks.DEKs[i].State != core.StateDecryptOnly {
				continue
			}
			id := ks.DEKs[i].ID
			if !slices.Contains(replaced, id) {
				kept = append(kept, fmt.Sprintf("%08x", id))
				continue
			}
			if err := ks.SetState(id, core.StateRetired); err != nil {
				return err
			}
			retired = append(retired, fmt.Sprintf("%08x", id))
		}
		return nil
	})
	if err != nil {
		return err
	}
	res.Retired, res.KeptOld = retired, kept
	return nil
}

func (a *app) reencryptDryRun(tbl *sqltable.Table, ks *core.Keyset, f *reencryptFlags, res *reencryptResult) error {
	var target uint32 // 0: a new DEK would be created
	job, err := tbl.OpenJob(a.ctx)
	switch {
	case err == nil:
		res.Job = job.ID
		target = job.TargetDEK
	case errors.Is(err, sqltable.ErrNoJob):
		p, err := ks.Primary()
		if err != nil {
			return err
		}
		// As a run would: onto the primary with --to-primary, or when the
		// table's last rotation, onto the primary, is done.
		if f.toPrimary {
			target = p.ID
		} else if last, lerr := tbl.LastJob(a.ctx); lerr == nil && last.State == sqltable.JobDone && last.TargetDEK == p.ID {
			target = p.ID
		}
	default:
		return fmt.Errorf("reencrypt: %w", err)
	}
	if target != 0 {
		res.TargetDEK = fmt.Sprintf("%08x", target)
	}
	r, err := core.NewReencrypter(core.ReencryptOptions{AD: func(dst []byte, _ string, _ int64) []byte { return dst }, DryRun: true, DryRunTarget: target, Batch: max(f.batch, 1000)})
	if err != nil {
		return err
	}
	st, err := r.Run(a.ctx, tbl.Reader(), core.Cursor{}, nil)
	res.Stats = st
	if err != nil {
		return err
	}
	res.WouldChange = dekCounts(ks, st.ByDEK, f.columns)
	res.OldValues = st.Reencrypted
	return nil
}

func (a *app) reencryptRun(tbl *sqltable.Table, ks *core.Keyset, f *reencryptFlags, res *reencryptResult) error {
	owner := "single"
	if f.worker {
		owner = sqltable.WorkerID()
	} else {
		unlock, err := tbl.LockSingle(a.ctx)
		if err != nil {
			if errors.Is(err, sqltable.ErrBusy) {
				return withHint(fmt.Errorf("reencrypt: %w", err), "wait for it to finish, or (PostgreSQL) run every process with --worker")
			}
			return fmt.Errorf("reencrypt: %w", err)
		}
		defer unlock()
	}
	primary, err := ks.Primary()
	if err != nil {
		return err
	}
	// 1. Find or create the job; its target DEK is stored before any row
	// is touched.
	job, err := tbl.OpenJob(a.ctx)
	toPrimary := f.toPrimary
	if errors.Is(err, sqltable.ErrNoJob) && !f.toPrimary && !f.newDEK {
		// The last rotation of this table is done and its DEK is still
		// the primary: a rerun (say after a kill during the final verify)
		// must not start a second rotation. A worker that starts after the
		// others finished does nothing; a single run sweeps onto the
		// primary and verifies (and retires, if asked).
		if last, lerr := tbl.LastJob(a.ctx); lerr == nil && last.State == sqltable.JobDone && last.TargetDEK == primary.ID {
			if f.worker {
				res.Job = last.ID
				res.TargetDEK = fmt.Sprintf("%08x", last.TargetDEK)
				res.Stats = &core.ReencryptStats{}
				fmt.Fprintf(a.stderr, "keyctl: reencrypt: job %d onto the primary DEK %08x is already done; nothing to do\n", last.ID, last.TargetDEK)
				return nil
			}
			fmt.Fprintf(a.stderr, "keyctl: reencrypt: job %d onto the primary DEK %08x is done; re-encrypting onto it what remains (as --to-primary); give --new-dek to start another rotation\n", last.ID, last.TargetDEK)
			toPrimary = true
		}
	}
	if errors.Is(err, sqltable.ErrNoJob) {
		o := sqltable.JobOptions{AAD: f.aad, PrevDEK: primary.ID, ChunkKeys: f.chunkKeys}
		if o.AAD == "" {
			o.AAD = core.DefaultADFormat
		}
		if toPrimary {
			// The target must be the primary now, not when the command
			// started: a job onto a DEK that is no longer primary could
			// never run.
			now, _, lerr := a.loadKeyset()
			if lerr != nil {
				return lerr
			}
			p, perr := now.Primary()
			if perr != nil {
				return perr
			}
			if p.ID != primary.ID {
				return fmt.Errorf("reencrypt: the keyset's primary DEK changed from %08x to %08x while starting; run again: %w", primary.ID, p.ID, core.ErrConflict)
			}
			o.TargetDEK = primary.ID
		}
		job, _, err = tbl.CreateJob(a.ctx, o)
	}
	if err != nil {
		return fmt.Errorf("reencrypt: %w", err)
	}
	res.Job = job.ID
	tpl, err := adTemplate(f, job)
	if err != nil {
		return err
	}
	if job.State == sqltable.JobNewDEK {
		id, added, err := a.reencryptNewDEK(job)
		if err != nil {
			return err
		}
		res.NewDEK = added
		if err := job.SetTarget(a.ctx, id); err != nil {
			return fmt.Errorf("reencrypt: %w", err)
		}
	}
	res.TargetDEK = fmt.Sprintf("%08x", job.TargetDEK)

	// 2. The cipher: every DEK not retired, the job's target as primary.
	ks, _, err = a.loadKeyset()
	if err != nil {
		return err
	}
	ring, err := a.keyring()
	if err != nil {
		return err
	}
	fc, err := ks.OpenFieldCipher(a.ctx, ring)
	if err != nil {
		return err
	}
	if fc.PrimaryID() != job.TargetDEK {
		return withHint(fmt.Errorf("reencrypt: job %d targets DEK %08x but the keyset's primary is now %08x: %w", job.ID, job.TargetDEK, fc.PrimaryID(), core.ErrFailedPrecondition),
			fmt.Sprintf("another rotation changed the primary; give the job up with --abandon-job (safe: every value is under a DEK of the keyset), then run again (--to-primary to move the values onto %08x)", fc.PrimaryID()))
	}
	for id, uerr := range fc.Unavailable() {
		fmt.Fprintf(a.stderr, "keyctl: reencrypt: warning: DEK %08x cannot be unwrapped (%s); values under it will fail\n", id, oneLine(uerr.Error()))
	}

	// 3. The rows.
	p, err := a.newProgress(f.progress, "reencrypt", "rows", 0, f.progressInterval)
	if err != nil {
		return err
	}
	if n, err := tbl.Count(a.ctx); err == nil {
		p.total = int(n)
	}
	var before int64
	if !f.worker {
		before, _ = job.RowsDone(a.ctx)
	}
	extra := func(st *core.ReencryptStats) string {
		return fmt.Sprintf("re-encrypted %d, current %d, conflicts %d, failed %d", st.Reencrypted, st.Current, st.Conflicts, st.Failed)
	}
	r, err := core.NewReencrypter(core.ReencryptOptions{Cipher: fc, AD: tpl.Func(), Batch: f.batch,
		Progress: func(st *core.ReencryptStats, _ core.Cursor) { p.update(int(before+st.Rows), extra(st)) }})
	if err != nil {
		return err
	}
	st, err := job.Process(a.ctx, r, sqltable.ProcessOptions{Owner: owner, Lease: f.lease, Poll: min(f.lease/4, time.Second)}, nil)
	res.Stats = st
	p.finish(int(before+st.Rows), extra(st))
	if err != nil {
		if a.ctx.Err() != nil {
			return fmt.Errorf("reencrypt: interrupted; every committed batch is kept, run the same command again to resume: %w", a.ctx.Err())
		}
		return fmt.Errorf("reencrypt: %w", err)
	}

	// 4. Verify.
	vst, err := core.Verify(a.ctx, tbl.Reader(), max(f.batch, 1000), nil)
	if err != nil {
		return fmt.Errorf("reencrypt: %w", err)
	}
	res.Verify = dekCounts(ks, vst.ByDEK, f.columns)
	res.OldValues = vst.OldValues(job.TargetDEK)
	complete := a.checkVerified(tbl, vst, res)
	if f.retireOld {
		replaced, err := tbl.ReplacedDEKs(a.ctx, job.TargetDEK)
		if err != nil {
			return fmt.Errorf("reencrypt: %w", err)
		}
		return a.retireOld(ks, job.TargetDEK, vst, complete, replaced, res)
	}
	return nil
}

// reencryptNewDEK gives a job in state new-dek its target: the keyset's
// primary if it is no longer the one the job recorded (a crashed run added
// it already), else a new DEK added now. The keyset store's lock makes
// this safe against concurrent workers.
func (a *app) reencryptNewDEK(job *sqltable.Job) (id uint32, added bool, err error) {
	ring, err := a.keyring()
	if err != nil {
		return 0, false, err
	}
	_, err = a.updateKeyset(false, func(ks *core.Keyset) error {
		p, err := ks.Primary()
		if err != nil {
			return err
		}
		if p.ID != job.PrevDEK {
			id, added = p.ID, false
			return nil
		}
		id, err = ks.AddDEK(a.ctx, ring, time.Now())
		added = err == nil
		return err
	})
	if err != nil {
		return 0, false, fmt.Errorf("reencrypt: new DEK: %w", err)
	}
	return id, added, nil
}

// reencryptReport prints the result: JSON, or a summary on stdout.
func (a *app) reencryptReport(res *reencryptResult) {
	if a.jsonOut {
		a.emitJSON(res)
		return
	}
	where := fmt.Sprintf("%s %s(%s)", res.Database, res.Table, strings.Join(res.Columns, ","))
	if res.Stats != nil && res.Mode != "dry-run" {
		st := res.Stats
		if res.NewDEK {
			a.printf("new primary DEK %s added to the keyset (job %d)\n", res.TargetDEK, res.Job)
		}
		a.printf("reencrypt %s onto DEK %s: rows %d, re-encrypted %d, already current %d, null %d, empty %d, conflicts %d, failed %d (%s)\n",
			where, res.TargetDEK, st.Rows, st.Reencrypted, st.Current, st.Null, st.Empty, st.Conflicts, st.Failed, res.Elapsed)
	}
	if res.Mode == "dry-run" {
		target := res.TargetDEK
		if target == "" {
			target = "a new DEK"
		}
		a.printf("dry run %s: %d value(s) would be re-encrypted onto %s, %d already current, %d null, %d empty, %d invalid\n",
			where, res.Stats.Reencrypted, target, res.Stats.Current, res.Stats.Null, res.Stats.Empty, res.Stats.Failed)
		for _, d := range res.WouldChange {
			a.printf("  %s: DEK %s (%s): %d\n", d.Column, d.DEKID, d.State, d.Values)
		}
		return
	}
	if res.Verify != nil {
		a.printf("verify %s: values per DEK\n", where)
		for _, d := range res.Verify {
			a.printf("  %s: DEK %s (%s): %d\n", d.Column, d.DEKID, d.State, d.Values)
		}
		if res.OldValues == 0 {
			a.printf("no value is under an old DEK\n")
		} else {
			a.printf("%d value(s) are still under an old DEK; run keyctl reencrypt again (--to-primary once the job is done)\n", res.OldValues)
		}
	}
	for _, id := range res.Retired {
		a.printf("DEK %s retired\n", id)
	}
	for _, id := range res.KeptOld {
		a.printf("DEK %s stays decrypt-only: no rotation of this table replaced it (it may encrypt other tables)\n", id)
	}
}
