package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyctl/keyctl/config"
	"github.com/keyctl/keyctl/core"
)

// rewrapItem is the outcome for one wrapped key.
type rewrapItem struct {
	File       string `json:"file,omitempty"`
	Line       int    `json:"line,omitempty"`
	DEKID      string `json:"dek_id,omitempty"`
	Status     string `json:"status"` // rewrapped, already-current, failed
	KeyVersion string `json:"key_version,omitempty"`
	WrappedKey string `json:"wrapped_key,omitempty"` // stdin mode
	Error      string `json:"error,omitempty"`

	err error
}

type rewrapSummary struct {
	Rewrapped      int    `json:"rewrapped"`
	AlreadyCurrent int    `json:"already_current"`
	Failed         int    `json:"failed"`
	Provider       string `json:"provider,omitempty"`
	KeyVersion     string `json:"key_version,omitempty"`
	// Keyset mode only.
	Keyset    string         `json:"keyset,omitempty"`
	Conflicts int            `json:"conflicts,omitempty"`
	DryRun    bool           `json:"dry_run,omitempty"`
	Replaced  map[string]int `json:"would_replace,omitempty"`
	// Results lists every key in FILE and stdin mode, only the failures
	// (at most rewrapFailuresShown) in keyset mode.
	Results []rewrapItem `json:"results"`
	// FailuresNotShown counts keyset failures beyond Results.
	FailuresNotShown int `json:"failures_not_shown,omitempty"`
}

func (s *rewrapSummary) add(it rewrapItem) {
	switch it.Status {
	case core.Rewrapped.String():
		s.Rewrapped++
	case core.AlreadyCurrent.String():
		s.AlreadyCurrent++
	default:
		s.Failed++
		if it.err != nil {
			it.Error = oneLine(it.err.Error())
		}
	}
	s.Results = append(s.Results, it)
}

func (s *rewrapSummary) line() string {
	if s.DryRun {
		return fmt.Sprintf("would rewrap %d, already current %d", s.Rewrapped, s.AlreadyCurrent)
	}
	return fmt.Sprintf("rewrapped %d, already current %d, failed %d", s.Rewrapped, s.AlreadyCurrent, s.Failed)
}

// status returns nil when nothing failed, else an exitStatus: 2 when every
// failure is a usage or input error, 1 otherwise.
func (s *rewrapSummary) status() error {
	if s.Failed == 0 {
		return nil
	}
	code := exitUsage
	for _, it := range s.Results {
		if it.err != nil && exitCode(&commandError{err: it.err}) != exitUsage {
			code = exitFailure
		}
	}
	return &exitStatus{code: code, msg: s.line()}
}

// rewrapFlags are the options of keyctl rewrap.
type rewrapFlags struct {
	ctxPairs []string
	keyset   bool
	to, add  string
	drop     []string
	dryRun   bool
	workers  int
	batch    int
	progress string
	interval time.Duration
}

func (a *app) rewrapCommand() *cobra.Command {
	var f rewrapFlags
	c := &cobra.Command{
		Use:   "rewrap [FILE...] [--keyset] [--to NAME | --add NAME] [--drop NAME...] [--dry-run]",
		Short: "Move wrapped keys onto a KEK's current version, or to another vault",
		Long: `Rewrap wrapped keys onto the keyring primary's current KEK version (after
'keyctl rotate'), or move them between vaults. The DEK inside does not change,
so data encrypted under it needs no re-encryption. Every new wrap is verified
by unwrapping it and comparing before anything is written, and a wrap is
removed only once the DEK is known to open from what stays.

  FILE...    each file holds one wrapped key (text or binary form) and is
             rewritten in place, atomically and in the same form, only when
             it changed;
  (no FILE)  reads one text wrapped key per line on stdin and prints the
             results one per line, in order (a line that fails is printed
             unchanged; blank lines are kept);
  --keyset   rewraps every DEK of the configured keyset store (file, SQLite
             or PostgreSQL) in batches, each stored by compare-and-swap in one
             transaction; a progress bar (terminal) or a log line every
             --progress-interval (otherwise) goes to stderr.

What each key becomes:
  (default)  a wrap under the primary's current KEK version replaces the
             primary KEK's older wraps; wraps under other KEKs stay;
  --to NAME  migrate: a wrap under provider NAME's current version, and every
             other wrap removed (NAME is a provider block of keyctl.hcl);
  --add NAME add a wrap under NAME and keep the existing ones (a second vault
             for disaster recovery, or the first step of a gradual move);
  --drop NAME remove the wraps of NAME (repeatable; with --add, or alone).
             NAME may also be PROVIDER-TYPE:KEY-ID for a KEK no longer
             configured: its wraps are then removed unchecked, once another
             wrap is shown to open;
  --dry-run  count what would change, per KEK version, without using a key.

Rerunning is safe and skips what is already done: interrupting rewrap, or
killing it, loses nothing. The summary "rewrapped N, already current N,
failed N" goes to stdout (stderr when stdout carries wrapped keys); each
failure is reported on stderr with its reason. Exit status: 0 if nothing
failed, 2 if every failure was an input error, 1 otherwise.`,
		Example: `  keyctl rotate && keyctl rewrap --keyset
  keyctl rewrap --keyset --dry-run --to kms
  keyctl rewrap --keyset --to kms
  keyctl rewrap --keyset --add hsm
  keyctl rewrap app.wk billing.wk
  keyctl rewrap < wrapped-keys.txt > rewrapped.txt`,
		RunE: action(func(cmd *cobra.Command, args []string) error {
			return a.runRewrap(f, args)
		}),
	}
	fl := c.Flags()
	fl.StringArrayVar(&f.ctxPairs, "context", nil, "encryption context pair key=value the keys were wrapped with (repeatable)")
	fl.BoolVar(&f.keyset, "keyset", false, "rewrap every DEK of the configured keyset store")
	fl.StringVar(&f.to, "to", "", "migrate to provider `NAME`: wrap under it, remove every other wrap")
	fl.StringVar(&f.add, "add", "", "add a wrap under provider `NAME`, keeping the others")
	fl.StringArrayVar(&f.drop, "drop", nil, "remove the wraps of provider `NAME` or TYPE:KEY-ID (repeatable)")
	fl.BoolVar(&f.dryRun, "dry-run", false, "with --keyset: count what would change, per KEK version; use no key, write nothing")
	fl.IntVar(&f.workers, "workers", 16, "keys rewrapped at once when they cannot be batched in one provider call")
	fl.IntVar(&f.batch, "batch", 0, "with --keyset: DEKs per store transaction (default 16384)")
	fl.StringVar(&f.progress, "progress", "auto", "progress on stderr: auto (a bar on a terminal, else log lines), bar, log or none")
	fl.DurationVar(&f.interval, "progress-interval", 10*time.Second, "time between progress log lines")
	return c
}

// rewrapper builds the keyring and Rewrapper that f asks for: the
// configured keyring, plus the providers named by --to, --add and --drop.
func (a *app) rewrapper(f rewrapFlags) (*core.Rewrapper, error) {
	switch {
	case f.to != "" && f.add != "":
		return nil, usagef("rewrap: --to migrates and --add adds; choose one")
	case f.to != "" && len(f.drop) > 0:
		return nil, usagef("rewrap: --to already removes every other wrap; --drop does not apply")
	}
	cfg, err := a.config()
	if err != nil {
		return nil, err
	}
	ring, err := a.keyring()
	if err != nil {
		return nil, err
	}
	extra := func(name string) (core.KeyProvider, error) {
		p, err := a.provider(name)
		if err != nil {
			return nil, err
		}
		if _, ok := ring.Provider(p.Ref()); !ok {
			// Not in the keyring block: add it, to unwrap and check.
			refs := ring.Refs()
			others := make([]core.KeyProvider, 0, len(refs))
			for _, r := range refs[1:] {
				q, _ := ring.Provider(r)
				others = append(others, q)
			}
			ring, err = core.NewKeyring(ring.Primary(), append(others, p)...)
			if err != nil {
				return nil, fmt.Errorf("%s: %w: %w", cfg.Path, config.ErrInvalid, err)
			}
		}
		return p, nil
	}
	var o core.RewrapOptions
	for _, name := range []string{f.to, f.add} {
		if name == "" {
			continue
		}
		p, err := extra(name)
		if err != nil {
			return nil, err
		}
		o.Target = p.Ref()
	}
	o.Exclusive = f.to != ""
	for _, name := range f.drop {
		if _, ok := cfg.Provider(name); ok {
			p, err := extra(name)
			if err != nil {
				return nil, err
			}
			o.Drop = append(o.Drop, p.Ref())
			continue
		}
		typ, id, ok := strings.Cut(name, ":")
		if !ok || typ == "" || id == "" {
			return nil, withHint(usagef("rewrap: --drop %q: no provider of that name in %s", name, cfg.Path),
				"name a provider block, or a KEK that is no longer configured as TYPE:KEY-ID (see keyctl inspect); configured: "+providerNames(cfg))
		}
		o.Drop = append(o.Drop, core.KeyRef{Provider: typ, KeyID: id})
	}
	o.NoTarget = len(o.Drop) > 0 && f.add == "" && f.to == ""
	for _, d := range o.Drop {
		if d == o.Target || (o.Target == (core.KeyRef{}) && !o.NoTarget && d == ring.Primary().Ref()) {
			return nil, usagef("rewrap: %s is both where keys go and dropped", d)
		}
		if o.NoTarget && d == ring.Primary().Ref() {
			fmt.Fprintf(a.stderr, "keyctl: warning: dropping the wraps of the keyring primary %s; keys keep only their other wraps\n", d)
		}
	}
	rw, err := ring.NewRewrapperWith(a.ctx, o)
	if err != nil {
		return nil, err
	}
	return rw, nil
}

func (a *app) runRewrap(f rewrapFlags, args []string) error {
	switch {
	case f.keyset && len(args) > 0:
		return usagef("rewrap: --keyset takes no FILE arguments")
	case f.keyset && len(f.ctxPairs) > 0:
		return usagef("rewrap: --keyset uses each DEK's own context; --context does not apply")
	case f.dryRun && !f.keyset:
		return usagef("rewrap: --dry-run applies to --keyset (keyctl inspect shows a single key's wraps)")
	case f.workers < 1 || f.workers > 1024:
		return usagef("rewrap: --workers must be 1 to 1024")
	case f.batch < 0 || f.batch > 1<<20:
		return usagef("rewrap: --batch must be 1 to 1048576")
	}
	ec, err := parseContext(f.ctxPairs)
	if err != nil {
		return err
	}
	rw, err := a.rewrapper(f)
	if err != nil {
		return err
	}
	sum := &rewrapSummary{Results: []rewrapItem{}, DryRun: f.dryRun}
	if t, v := rw.Target(); t != nil {
		a.primaryRef = t.Ref()
		sum.Provider, sum.KeyVersion = t.Ref().String(), v
	}
	switch {
	case f.keyset:
		err = a.rewrapKeyset(rw, f, sum)
	case len(args) > 0:
		var pr *progress
		if pr, err = a.newProgress(f.progress, "rewrap", "files", len(args), f.interval); err == nil {
			err = a.rewrapFiles(rw, args, ec, sum, pr)
		}
	default:
		var pr *progress
		if pr, err = a.newProgress(f.progress, "rewrap", "keys", 0, f.interval); err == nil {
			err = a.rewrapStdin(rw, ec, sum, f.workers, pr)
		}
	}
	if err != nil {
		return err
	}
	toStderr := !f.keyset && len(args) == 0
	for _, it := range sum.Results {
		if it.err != nil {
			fmt.Fprintln(a.stderr, errorLine(&commandError{err: fmt.Errorf("rewrap: %w", it.err)}))
		}
	}
	if sum.FailuresNotShown > 0 {
		fmt.Fprintf(a.stderr, "keyctl: error: rewrap: %d more failure(s) not shown\n", sum.FailuresNotShown)
	}
	if a.jsonOut {
		a.emitJSON(sum)
	} else if toStderr {
		fmt.Fprintln(a.stderr, sum.line())
	} else {
		a.printf("%s\n", sum.line())
		if f.dryRun {
			for _, k := range sortedKeys(sum.Replaced) {
				a.printf("  would replace %d wrap(s) under %s\n", sum.Replaced[k], oneLine(k))
			}
			if sum.Rewrapped > 0 && sum.Provider != "" {
				a.printf("  new wraps under %s@%s\n", sum.Provider, oneLine(sum.KeyVersion))
			}
		}
	}
	if err := a.ctx.Err(); err != nil {
		// The summary (or JSON object) above is the report; add the
		// reason on stderr and exit 1.
		err = &commandError{err: fmt.Errorf("rewrap interrupted after %d key(s); nothing is lost, run it again to finish: %w", sum.Rewrapped+sum.AlreadyCurrent+sum.Failed, err)}
		fmt.Fprintln(a.stderr, errorLine(err))
		return &exitStatus{code: exitCode(err), msg: err.Error()}
	}
	return sum.status()
}

// sortedKeys returns m's keys in order.
func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// rewrapFailuresShown is the number of keyset failures reported one by one.
const rewrapFailuresShown = 100

// rewrapKeyset rewraps every DEK of the configured keyset store with
// core's bulk rewrap.
func (a *app) rewrapKeyset(rw *core.Rewrapper, f rewrapFlags, sum *rewrapSummary) error {
	where, err := a.withKeysetStore(func(cfg *config.Config, st core.KeysetStore) error {
		if cfg.Keyset.Kind() == "file" {
			if _, err := os.Stat(cfg.Keyset.File); errors.Is(err, os.ErrNotExist) {
				return a.keysetMissing(cfg)
			}
		}
		return a.rewrapStore(rw, st, f, sum)
	})
	sum.Keyset = where
	return err
}

// rewrapStore runs the bulk rewrap of st and fills sum. The error is the
// store's (or the progress flags'); DEK failures are in sum.
func (a *app) rewrapStore(rw *core.Rewrapper, st core.KeysetStore, f rewrapFlags, sum *rewrapSummary) error {
	total := 0
	if c, ok := st.(core.EntryCounter); ok {
		var err error
		if total, err = c.CountEntries(a.ctx); err != nil {
			return err
		}
	}
	batch := f.batch
	if batch == 0 {
		// One transaction (and fsync) per batch; for a keyset file each
		// rewrites the whole file. A killed run redoes at most one batch.
		batch = 16384
	}
	// A bulk pass allocates many short-lived records; its live heap is a
	// few pages of entries, so let the heap grow further between
	// collections (the previous setting is restored at the end).
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	pr, err := a.newProgress(f.progress, "rewrap", "DEKs", total, f.interval)
	if err != nil {
		return err
	}
	counts := func(s core.BulkStats) string {
		if f.dryRun {
			return fmt.Sprintf("would rewrap %d, already current %d", s.Rewrapped, s.AlreadyCurrent)
		}
		return fmt.Sprintf("rewrapped %d, already current %d, failed %d", s.Rewrapped, s.AlreadyCurrent, s.Failed)
	}
	stats, err := rw.RewrapStore(a.ctx, st, core.BulkOptions{
		PageSize: batch, Concurrency: f.workers, DryRun: f.dryRun, MaxFailures: rewrapFailuresShown,
		Progress: func(s core.BulkStats) { pr.update(s.Seen, counts(s)) },
	})
	pr.finish(stats.Seen, counts(stats))
	sum.Rewrapped, sum.AlreadyCurrent, sum.Conflicts = stats.Rewrapped, stats.AlreadyCurrent, stats.Conflicts
	if f.dryRun {
		sum.Replaced = stats.From
	}
	for _, fl := range stats.Failures {
		sum.add(rewrapItem{DEKID: fmt.Sprintf("%08x", fl.ID), Status: core.RewrapFailed.String(),
			err: fmt.Errorf("keyset DEK %08x: %w", fl.ID, fl.Err)})
	}
	sum.FailuresNotShown = stats.Failed - len(stats.Failures)
	sum.Failed = stats.Failed
	if err != nil && a.ctx.Err() == nil {
		return fmt.Errorf("rewrap: %w", err)
	}
	return nil
}

// rewrapOne rewraps wk and fills the item's status.
func rewrapOne(a *app, rw *core.Rewrapper, wk *core.WrappedKey, ec core.Context, it *rewrapItem) *core.WrappedKey {
	out, st, err := rw.Rewrap(a.ctx, wk, ec)
	return fillItem(a, it, out, st, err)
}

// fillItem records the outcome of one rewrap in it and returns the record
// to keep, nil when it failed.
func fillItem(a *app, it *rewrapItem, out *core.WrappedKey, st core.RewrapStatus, err error) *core.WrappedKey {
	ref := a.primaryRef
	if err != nil {
		it.Status, it.err = core.RewrapFailed.String(), err
		return nil
	}
	it.Status = st.String()
	it.KeyVersion = out.Stanzas[0].KeyVersion
	for _, s := range out.Stanzas {
		if s.Ref() == ref {
			it.KeyVersion = s.KeyVersion
			break
		}
	}
	return out
}

// rewrapBatch is how many stdin lines rewrap hands to core's RewrapAll at
// once: with a plugin provider one RPC then serves many keys.
const rewrapBatch = 1024

// interrupted reports whether err only says that the command was
// interrupted before the item was done.
func (a *app) interrupted(err error) bool {
	return err != nil && a.ctx.Err() != nil && errors.Is(err, a.ctx.Err())
}

func (a *app) rewrapFiles(rw *core.Rewrapper, files []string, ec core.Context, sum *rewrapSummary, pr *progress) error {
	defer func() { pr.finish(len(sum.Results), sum.line()) }()
	for _, f := range files {
		if a.ctx.Err() != nil {
			break // interrupted: report what was done
		}
		it := rewrapItem{File: f}
		wk, binary, err := a.readWrappedKey(f)
		if err != nil {
			it.Status, it.err = core.RewrapFailed.String(), err
			sum.add(it)
			continue
		}
		out := rewrapOne(a, rw, wk, ec, &it)
		if it.err != nil {
			it.err = fmt.Errorf("%s: %w", f, it.err)
		}
		if out != nil && it.Status == core.Rewrapped.String() {
			var data []byte
			if binary {
				data, err = out.MarshalBinary()
			} else {
				data, err = out.MarshalText()
				data = append(data, '\n')
			}
			if err == nil {
				err = writeFileAtomic(f, data, fileMode(f, 0o600), true)
			}
			if err != nil {
				it.Status, it.err = core.RewrapFailed.String(), fmt.Errorf("%s: %w", f, err)
			}
		}
		sum.add(it)
		pr.update(len(sum.Results), sum.line())
	}
	return nil
}

func (a *app) rewrapStdin(rw *core.Rewrapper, ec core.Context, sum *rewrapSummary, workers int, pr *progress) error {
	defer func() { pr.finish(len(sum.Results), sum.line()) }()
	sc := bufio.NewScanner(a.stdin)
	sc.Buffer(make([]byte, 0, 64<<10), core.MaxWrappedKeyText+16)
	var out bytes.Buffer
	type line struct {
		text string // as read
		it   rewrapItem
		wk   *core.WrappedKey // nil: blank or unparsable
		kept bool             // blank, or not reached before an interrupt
	}
	var chunk []line
	// flush rewraps the parsed lines of chunk in batches and writes every
	// line, in order.
	flush := func() {
		var items []core.RewrapItem
		var idx []int
		for i := range chunk {
			if chunk[i].wk != nil {
				items = append(items, core.RewrapItem{Key: chunk[i].wk, Context: ec})
				idx = append(idx, i)
			}
		}
		if len(items) > 0 {
			for j, r := range rw.RewrapAll(a.ctx, items, workers) {
				l := &chunk[idx[j]]
				if a.interrupted(r.Err) {
					l.kept = true
					continue
				}
				res := fillItem(a, &l.it, r.Key, r.Status, r.Err)
				if l.it.err != nil {
					l.it.err = fmt.Errorf("stdin line %d: %w", l.it.Line, l.it.err)
				}
				l.it.WrappedKey = strings.TrimSpace(l.text)
				if res != nil {
					t, err := res.MarshalText()
					if err != nil {
						l.it.Status, l.it.err = core.RewrapFailed.String(), err
					} else {
						l.it.WrappedKey = string(t)
					}
				}
			}
		}
		for _, l := range chunk {
			switch {
			case l.kept:
				out.WriteString(l.text + "\n")
			case l.wk == nil: // unparsable
				sum.add(l.it)
				out.WriteString(l.text + "\n")
			default:
				sum.add(l.it)
				out.WriteString(l.it.WrappedKey + "\n")
			}
		}
		chunk = chunk[:0]
		pr.update(len(sum.Results), sum.line())
	}
	n := 0
	for sc.Scan() {
		n++
		text := sc.Text()
		trimmed := strings.TrimSpace(text)
		if trimmed == "" {
			chunk = append(chunk, line{text: text, kept: true})
			continue
		}
		l := line{text: text, it: rewrapItem{Line: n}}
		wk, err := core.ParseWrappedKey([]byte(trimmed))
		if err != nil {
			l.it.Status, l.it.err = core.RewrapFailed.String(), fmt.Errorf("stdin line %d: %w", n, err)
			l.it.WrappedKey = trimmed
		} else {
			l.wk = wk
		}
		chunk = append(chunk, l)
		if len(chunk) >= rewrapBatch {
			flush()
		}
		if a.ctx.Err() != nil {
			break
		}
	}
	flush()
	if a.ctx.Err() != nil {
		// Interrupted: pass the remaining lines through unchanged so that
		// the output still holds every key.
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("stdin line %d: longer than the largest wrapped key (%d bytes): %w", n+1, core.MaxWrappedKeyText, core.ErrMalformed)
		}
		return fmt.Errorf("read stdin: %w", err)
	}
	if !a.jsonOut {
		_, _ = a.stdout.Write(out.Bytes())
	}
	return nil
}
