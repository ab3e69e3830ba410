package core

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// RewrapStatus says what Rewrap did.
type RewrapStatus int

// Outcomes of Rewrap.
const (
	// RewrapFailed: nothing changed; the error says why.
	RewrapFailed RewrapStatus = iota
	// AlreadyCurrent: the record already satisfied the Rewrapper (a wrap
	// under the target's current KEK version, nothing to drop); it is
	// returned unchanged.
	AlreadyCurrent
	// Rewrapped: a new, verified record replaces the old one.
	Rewrapped
)

// String names the status.
func (s RewrapStatus) String() string {
	switch s {
	case AlreadyCurrent:
		return "already-current"
	case Rewrapped:
		return "rewrapped"
	default:
		return "failed"
	}
}

// RewrapOptions say what a [Rewrapper] makes of each record. The zero value
// is KEK rotation: a wrap under the keyring primary's current KEK version
// replaces the primary KEK's older wraps, and wraps under other KEKs stay.
type RewrapOptions struct {
	// Target is the provider whose current KEK version every record gets a
	// wrap under; the keyring's primary when zero. It must be one of the
	// keyring's providers. The new wrap goes first in the record when the
	// target is the primary, last otherwise (so an extra wrap added for
	// disaster recovery is not the one tried first).
	Target KeyRef
	// Exclusive removes the wraps of every other KEK once the target's new
	// wrap is verified: a migration to Target (keyctl rewrap --to).
	Exclusive bool
	// Drop lists KEKs whose wraps are removed (keyctl rewrap --drop). A
	// record is never left without a wrap that was opened or verified.
	Drop []KeyRef
	// NoTarget adds no wrap: the Rewrapper only drops (Drop must be set).
	NoTarget bool
}

// Rewrapper moves wrapped keys onto a target provider's current KEK version
// and removes wraps as its options say. It reads the current version once;
// create a new one after rotating. It is safe for concurrent use.
//
// Every wrap it removes is first known to hold the record's DEK: it is the
// wrap that opened, or it opens to the same DEK, or its KEK version is gone
// (ErrKeyNotFound). A new wrap is opened and compared before the record that
// holds it is returned. A removed wrap whose KEK is not configured is only
// accepted when its KEK is named in Drop.
type Rewrapper struct {
	ring      *Keyring
	target    KeyProvider // nil: NoTarget
	current   string
	exclusive bool
	drop      map[KeyRef]bool
	first     bool // the new wrap goes first

	// VerifyCurrent makes Rewrap open a record's wrap under the current
	// version before calling it already current, instead of trusting the
	// labels in the record. A current-version wrap that does not open is
	// replaced from the record's other wraps. It costs one unwrap per
	// record.
	VerifyCurrent bool
}

// NewRewrapper returns a Rewrapper for r that moves records onto the
// primary provider's current KEK version (RewrapOptions{}).
func (r *Keyring) NewRewrapper(ctx context.Context) (*Rewrapper, error) {
	return r.NewRewrapperWith(ctx, RewrapOptions{})
}

// NewRewrapperWith returns a Rewrapper for r with options o, reading the
// target's current KEK version now. Inconsistent options wrap ErrMalformed.
func (r *Keyring) NewRewrapperWith(ctx context.Context, o RewrapOptions) (*Rewrapper, error) {
	rw := &Rewrapper{ring: r, exclusive: o.Exclusive, drop: map[KeyRef]bool{}}
	for _, d := range o.Drop {
		rw.drop[d] = true
	}
	if o.NoTarget {
		if len(o.Drop) == 0 || o.Exclusive {
			return nil, fmt.Errorf("rewrap: without a target only Drop applies: %w", ErrMalformed)
		}
		return rw, nil
	}
	rw.target = r.primary
	if o.Target != (KeyRef{}) {
		p, ok := r.providers[o.Target]
		if !ok {
			return nil, fmt.Errorf("rewrap: target %s is not in the keyring: %w", o.Target, ErrNoProvider)
		}
		rw.target = p
	}
	rw.first = rw.target.Ref() == r.primary.Ref()
	if rw.drop[rw.target.Ref()] {
		return nil, fmt.Errorf("rewrap: %s is both the target and dropped: %w", rw.target.Ref(), ErrMalformed)
	}
	v, err := rw.target.CurrentVersion(ctx)
	if err != nil {
		return nil, fmt.Errorf("provider %s: current version: %w", rw.target.Ref(), err)
	}
	rw.current = v
	return rw, nil
}

// Target returns the provider records are moved onto (nil when the
// Rewrapper only drops) and its current KEK version.
func (rw *Rewrapper) Target() (KeyProvider, string) { return rw.target, rw.current }

// Change is what a Rewrapper would do to one record, decided from its labels
// alone (no key is used): see [Rewrapper.Plan].
type Change struct {
	// Current: nothing to do.
	Current bool
	// AddTarget: a wrap under the target's current version would be added.
	AddTarget bool
	// Replace lists the stanzas the change replaces or removes: older
	// versions under the target (when AddTarget) and dropped KEKs' wraps.
	Replace []Stanza
}

// Plan says what Rewrap would do to wk, from the record's labels only; a
// dry run counts these. (VerifyCurrent may still find a labelled-current wrap
// broken, and a wrap that cannot be checked is kept, so Rewrap can do less.)
func (rw *Rewrapper) Plan(wk *WrappedKey) Change {
	var c Change
	has := rw.hasCurrent(wk)
	c.AddTarget = rw.target != nil && !has
	for i, s := range wk.Stanzas {
		if rw.removes(s) || (c.AddTarget && s.Ref() == rw.target.Ref()) {
			c.Replace = append(c.Replace, wk.Stanzas[i])
		}
	}
	c.Current = !c.AddTarget && len(c.Replace) == 0
	return c
}

// hasCurrent reports whether wk has a wrap under the target's current
// version.
func (rw *Rewrapper) hasCurrent(wk *WrappedKey) bool {
	if rw.target == nil {
		return false
	}
	ref := rw.target.Ref()
	for _, s := range wk.Stanzas {
		if s.Ref() == ref && s.KeyVersion == rw.current {
			return true
		}
	}
	return false
}

// removes reports whether the options remove s whatever else happens.
func (rw *Rewrapper) removes(s Stanza) bool {
	if rw.drop[s.Ref()] {
		return true
	}
	return rw.exclusive && s.Ref() != rw.target.Ref()
}

// Rewrap returns wk changed as the Rewrapper's options say; by default,
// moved onto the primary provider's current KEK version.
//
// If wk already satisfies them it is returned unchanged with AlreadyCurrent.
// Otherwise the DEK is opened (with any configured provider, preferring wraps
// that stay), wrapped under the target (with the vault's own rewrap when the
// target implements [VaultRewrapper] and the opened wrap is of its type), and
// the new wrap is verified by unwrapping it and comparing with the DEK before
// the result is built. Wraps are removed only as the [Rewrapper] doc says.
// wk itself is never modified, so a failure at any point loses nothing.
func (rw *Rewrapper) Rewrap(ctx context.Context, wk *WrappedKey, ec Context) (*WrappedKey, RewrapStatus, error) {
	if wk == nil || len(wk.Stanzas) == 0 {
		return nil, RewrapFailed, fmt.Errorf("rewrap: empty wrapped key: %w", ErrMalformed)
	}
	broken := -1 // a current-version wrap that failed VerifyCurrent
	has := rw.hasCurrent(wk)
	if has && rw.VerifyCurrent {
		ref := rw.target.Ref()
		for i, s := range wk.Stanzas {
			if s.Ref() != ref || s.KeyVersion != rw.current {
				continue
			}
			d, err := rw.target.UnwrapKey(ctx, s, ec)
			ok := err == nil && d.Validate() == nil
			d.Zero()
			if ok {
				broken = -1
				break
			}
			if ctx.Err() != nil {
				return nil, RewrapFailed, ctx.Err()
			}
			broken = i
		}
		has = broken < 0
	}
	remove := make([]bool, len(wk.Stanzas))
	anyRemove := false
	for i, s := range wk.Stanzas {
		remove[i] = rw.removes(s)
		anyRemove = anyRemove || remove[i]
	}
	addTarget := rw.target != nil && !has
	if !addTarget && !anyRemove {
		return wk, AlreadyCurrent, nil
	}

	// Open the DEK from a wrap that stays if one opens; when a new wrap is
	// made, any wrap will do.
	dek, opened, err := rw.ring.unwrapWhere(ctx, wk, ec, func(i int) bool { return i != broken && !remove[i] })
	if err != nil && addTarget && anyRemove && ctx.Err() == nil {
		var err2 error
		dek, opened, err2 = rw.ring.unwrapWhere(ctx, wk, ec, func(i int) bool { return i != broken && remove[i] })
		if err2 != nil {
			err = errors.Join(err, err2)
		} else {
			err = nil
		}
	}
	if err != nil {
		if !addTarget && !errors.Is(err, ErrNoProvider) {
			err = fmt.Errorf("no wrap that stays opens, so none is dropped: %w", err)
		} else if !addTarget {
			err = fmt.Errorf("no configured wrap stays after the drop: %w", err)
		}
		return nil, RewrapFailed, err
	}
	defer dek.Zero()

	var ns Stanza
	if addTarget {
		ns, err = rw.newWrap(ctx, wk.Stanzas[opened], dek, ec)
		if err != nil {
			return nil, RewrapFailed, err
		}
	}
	out := &WrappedKey{Stanzas: make([]Stanza, 0, len(wk.Stanzas)+1)}
	if addTarget && rw.first {
		out.Stanzas = append(out.Stanzas, ns)
	}
	for i, o := range wk.Stanzas {
		switch {
		case i == broken:
			// labelled current but does not open: replaced by ns
		case remove[i]:
			if err := rw.checkRemoved(ctx, o, i == opened, dek, ec); err != nil {
				return nil, RewrapFailed, fmt.Errorf("rewrap: wrap %d (%s version %q): %w", i, o.Ref(), o.KeyVersion, err)
			}
		case addTarget && o.Ref() == rw.target.Ref():
			drop, err := rw.replaceable(ctx, o, i == opened, dek, ec)
			if err != nil {
				return nil, RewrapFailed, fmt.Errorf("rewrap: wrap %d (%s version %q): %w", i, o.Ref(), o.KeyVersion, err)
			}
			if !drop {
				out.Stanzas = append(out.Stanzas, o)
			}
		default:
			out.Stanzas = append(out.Stanzas, o)
		}
	}
	if addTarget && !rw.first {
		out.Stanzas = append(out.Stanzas, ns)
	}
	if err := out.Validate(); err != nil {
		return nil, RewrapFailed, fmt.Errorf("rewrap: %w", err)
	}
	return out, Rewrapped, nil
}

// newWrap wraps dek under the target's current version, through the vault's
// own rewrap of src when it can, and verifies the result.
func (rw *Rewrapper) newWrap(ctx context.Context, src Stanza, dek DEK, ec Context) (Stanza, error) {
	t := rw.target
	if vr, ok := t.(VaultRewrapper); ok && src.Provider == t.Ref().Provider {
		s, err := vr.RewrapKey(ctx, src, ec)
		switch {
		case err == nil:
			if err := checkStanza(t, s); err != nil {
				return Stanza{}, err
			}
			if err := verifyStanza(ctx, t, s, dek, ec); err != nil {
				return Stanza{}, err
			}
			return s, nil
		case !errors.Is(err, ErrUnsupported):
			return Stanza{}, fmt.Errorf("provider %s: vault rewrap from %s version %q: %w", t.Ref(), src.Ref(), src.KeyVersion, err)
		}
	}
	return rw.ring.wrapStanza(ctx, t, dek, ec)
}

// checkRemoved decides whether a wrap the options remove may go: it is the
// wrap that opened (known), it opens to the same DEK, or its version no
// longer exists. A wrap of a KEK that is not configured can only be checked
// by the operator: it goes only when its KEK is named in Drop.
func (rw *Rewrapper) checkRemoved(ctx context.Context, o Stanza, known bool, dek DEK, ec Context) error {
	if known {
		return nil
	}
	p, ok := rw.ring.providers[o.Ref()]
	if !ok {
		if rw.drop[o.Ref()] {
			return nil
		}
		return fmt.Errorf("cannot check it before removing it: provider %s is not configured (configure it, or name it with drop to remove it unchecked): %w", o.Ref(), ErrNoProvider)
	}
	d, err := p.UnwrapKey(ctx, o, ec)
	if err != nil {
		if errors.Is(err, ErrKeyNotFound) {
			return nil
		}
		return fmt.Errorf("cannot check it before removing it: %w", err)
	}
	same := d.Equal(dek)
	d.Zero()
	if !same {
		return fmt.Errorf("holds a different DEK than the wrap that opened; the record is inconsistent: %w", ErrUnwrapFailed)
	}
	return nil
}

// replaceable decides whether an older wrap under the target KEK may be
// dropped now that the DEK is wrapped under the current version: only if it
// is known to hold the same DEK (it is the wrap that was opened, or it opens
// to the same DEK), or if it can never open again (its version is gone). A
// wrap that opens to another DEK means the record is inconsistent: the
// rewrap fails and changes nothing. A wrap that cannot be checked now (a
// disabled version, say) is kept.
func (rw *Rewrapper) replaceable(ctx context.Context, o Stanza, known bool, dek DEK, ec Context) (bool, error) {
	if known || o.KeyVersion == rw.current {
		return true, nil
	}
	d, err := rw.target.UnwrapKey(ctx, o, ec)
	if err != nil {
		if errors.Is(err, ErrKeyNotFound) {
			return true, nil
		}
		return false, nil
	}
	same := d.Equal(dek)
	d.Zero()
	if !same {
		return false, fmt.Errorf("holds a different DEK than the wrap that opened; the record is inconsistent: %w", ErrUnwrapFailed)
	}
	return true, nil
}

// RewrapItem is one wrapped key to rewrap with the context bound to it.
type RewrapItem struct {
	Key     *WrappedKey
	Context Context
}

// RewrapResult is the outcome for one RewrapItem. Key is the record to keep:
// the new one when Status is Rewrapped, the input otherwise.
type RewrapResult struct {
	Key    *WrappedKey
	Status RewrapStatus
	Err    error
}

// RewrapAll rewraps items with up to workers goroutines (at least 1) and
// returns one result per item, in order. A failed item keeps its input
// record. It stops starting new items when ctx is done; those get ctx's
// error.
//
// When the target implements [BatchProvider] (and VerifyCurrent is off),
// items whose only change is the target's own single wrap moving to the
// current version are rewrapped in batches by [BatchProvider.RewrapKeys]
// (see batch.go).
func (rw *Rewrapper) RewrapAll(ctx context.Context, items []RewrapItem, workers int) []RewrapResult {
	if bp, ok := rw.target.(BatchProvider); ok && !rw.VerifyCurrent {
		return rw.rewrapAllBatch(ctx, bp, items, max(1, workers))
	}
	return rw.rewrapAllSingle(ctx, items, workers)
}

func (rw *Rewrapper) rewrapAllSingle(ctx context.Context, items []RewrapItem, workers int) []RewrapResult {
	out := make([]RewrapResult, len(items))
	workers = max(1, min(workers, len(items)))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(items) {
					return
				}
				it := items[i]
				if err := ctx.Err(); err != nil {
					out[i] = RewrapResult{Key: it.Key, Status: RewrapFailed, Err: err}
					continue
				}
				k, st, err := rw.Rewrap(ctx, it.Key, it.Context)
				if err != nil {
					k = it.Key
				}
				out[i] = RewrapResult{Key: k, Status: st, Err: err}
			}
		}()
	}
	wg.Wait()
	return out
}
