package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/store"
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
	Rewrapped      int          `json:"rewrapped"`
	AlreadyCurrent int          `json:"already_current"`
	Failed         int          `json:"failed"`
	Provider       string       `json:"provider"`
	KeyVersion     string       `json:"key_version"`
	Results        []rewrapItem `json:"results"`
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

func (a *app) rewrapCommand() *cobra.Command {
	var ctxPairs []string
	var keyset bool
	c := &cobra.Command{
		Use:   "rewrap [FILE...] [--context k=v ...] [--keyset]",
		Short: "Move wrapped keys onto the primary KEK's current version",
		Long: `Rewrap wrapped keys onto the keyring primary's current KEK version (after
'keyctl rotate', or to move them onto another vault). The DEK inside does not
change, so data encrypted under it needs no re-encryption. Each new wrap is
verified by unwrapping it before anything is written.

  FILE...    each file holds one wrapped key (text or binary form) and is
             rewritten in place, atomically and in the same form, only when
             it changed;
  (no FILE)  reads one text wrapped key per line on stdin and prints the
             results one per line, in order (a line that fails is printed
             unchanged; blank lines are kept);
  --keyset   rewraps every DEK of the configured keyset (each with its own
             encryption context) and saves the keyset atomically.

The summary "rewrapped N, already current N, failed N" goes to stdout, or to
stderr when stdout carries wrapped keys; each failure is reported on stderr
with its reason. Exit status: 0 if nothing failed, 2 if every failure was an
input error, 1 otherwise. Interrupting rewrap loses nothing: run it again.`,
		Example: `  keyctl rotate && keyctl rewrap app.wk billing.wk
  keyctl rewrap < wrapped-keys.txt > rewrapped.txt
  keyctl rewrap --keyset`,
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if keyset && len(args) > 0 {
				return usagef("rewrap: --keyset takes no FILE arguments")
			}
			if keyset && len(ctxPairs) > 0 {
				return usagef("rewrap: --keyset uses each DEK's own context; --context does not apply")
			}
			ec, err := parseContext(ctxPairs)
			if err != nil {
				return err
			}
			ring, err := a.keyring()
			if err != nil {
				return err
			}
			rw, err := ring.NewRewrapper(a.ctx)
			if err != nil {
				return err
			}
			a.primaryRef = ring.Primary().Ref()
			current, _ := ring.Primary().CurrentVersion(a.ctx)
			sum := &rewrapSummary{Provider: ring.Primary().Ref().String(), KeyVersion: current, Results: []rewrapItem{}}
			switch {
			case keyset:
				err = a.rewrapKeyset(ring, rw, sum)
			case len(args) > 0:
				err = a.rewrapFiles(rw, args, ec, sum)
			default:
				err = a.rewrapStdin(rw, ec, sum)
			}
			if err != nil {
				return err
			}
			toStderr := !keyset && len(args) == 0
			for _, it := range sum.Results {
				if it.err != nil {
					fmt.Fprintln(a.stderr, errorLine(&commandError{err: fmt.Errorf("rewrap: %w", it.err)}))
				}
			}
			if a.jsonOut {
				a.emitJSON(sum)
			} else if toStderr {
				fmt.Fprintln(a.stderr, sum.line())
			} else {
				a.printf("%s\n", sum.line())
			}
			if err := a.ctx.Err(); err != nil {
				// The summary (or JSON object) above is the report; add the
				// reason on stderr and exit 1.
				err = &commandError{err: fmt.Errorf("rewrap interrupted after %d key(s); nothing is lost, run it again to finish: %w", len(sum.Results), err)}
				fmt.Fprintln(a.stderr, errorLine(err))
				return &exitStatus{code: exitCode(err), msg: err.Error()}
			}
			return sum.status()
		}),
	}
	c.Flags().StringArrayVar(&ctxPairs, "context", nil, "encryption context pair key=value the keys were wrapped with (repeatable)")
	c.Flags().BoolVar(&keyset, "keyset", false, "rewrap every DEK of the configured keyset")
	return c
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

// rewrapWorkers is the number of batches in flight.
const rewrapWorkers = 2

// interrupted reports whether err only says that the command was
// interrupted before the item was done.
func (a *app) interrupted(err error) bool {
	return err != nil && a.ctx.Err() != nil && errors.Is(err, a.ctx.Err())
}

func (a *app) rewrapFiles(rw *core.Rewrapper, files []string, ec core.Context, sum *rewrapSummary) error {
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
	}
	return nil
}

func (a *app) rewrapStdin(rw *core.Rewrapper, ec core.Context, sum *rewrapSummary) error {
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
			for j, r := range rw.RewrapAll(a.ctx, items, rewrapWorkers) {
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

func (a *app) rewrapKeyset(ring *core.Keyring, rw *core.Rewrapper, sum *rewrapSummary) error {
	unlock, err := a.lockKeyset()
	if err != nil {
		return err
	}
	defer unlock()
	ks, path, err := a.loadKeyset()
	if err != nil {
		return err
	}
	changed := false
	items := make([]core.RewrapItem, len(ks.DEKs))
	for i := range ks.DEKs {
		items[i] = core.RewrapItem{Key: ks.DEKs[i].Wrapped, Context: ks.DEKs[i].Context()}
	}
	for i, r := range rw.RewrapAll(a.ctx, items, rewrapWorkers) {
		if a.interrupted(r.Err) {
			continue // interrupted: save what was done
		}
		e := &ks.DEKs[i]
		it := rewrapItem{DEKID: fmt.Sprintf("%08x", e.ID)}
		out := fillItem(a, &it, r.Key, r.Status, r.Err)
		if it.err != nil {
			it.err = fmt.Errorf("keyset DEK %08x: %w", e.ID, it.err)
		}
		if out != nil && it.Status == core.Rewrapped.String() {
			e.Wrapped = out
			changed = true
		}
		sum.add(it)
	}
	if changed {
		if err := a.saveKeyset(ks, path); err != nil {
			return err
		}
	}
	return nil
}

// saveKeyset writes ks to path atomically, keeping the file's mode.
func (a *app) saveKeyset(ks *core.Keyset, path string) error {
	data, err := ks.Marshal()
	if err != nil {
		return fmt.Errorf("keyset %s: %w", path, err)
	}
	if err := writeFileAtomic(path, data, fileMode(path, 0o600), true); err != nil {
		return fmt.Errorf("keyset: %w", err)
	}
	return nil
}

// lockKeyset locks the configured keyset file against other keyctl
// processes; hold it from loadKeyset to saveKeyset when changing the keyset.
func (a *app) lockKeyset() (func(), error) {
	cfg, err := a.config()
	if err != nil {
		return nil, err
	}
	return store.LockFile(a.ctx, cfg.Keyset.File)
}

// loadKeyset reads the configured keyset file.
func (a *app) loadKeyset() (*core.Keyset, string, error) {
	cfg, err := a.config()
	if err != nil {
		return nil, "", err
	}
	path := cfg.Keyset.File
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o022 != 0 {
		// Anyone who can write the keyset can swap a DEK's wrap for one of a
		// DEK they know (with Encrypt rights on the KEK) or delete DEKs.
		return nil, path, withHint(fmt.Errorf("keyset %s has mode %04o: it is writable by group or others: %w", path, fi.Mode().Perm(), core.ErrPermission),
			"chmod 600 "+path)
	}
	b, err := readFileLimit(path, core.MaxKeysetBytes)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, path, withHint(usagef("keyset %s does not exist", path), "run `keyctl init` to create one, or fix the keyset block of "+cfg.Path)
		}
		return nil, path, fmt.Errorf("keyset: %w", err)
	}
	ks, err := core.ParseKeyset(b)
	if err != nil {
		return nil, path, fmt.Errorf("%s: %w", path, err)
	}
	return ks, path, nil
}
