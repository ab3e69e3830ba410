package core

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
)

// Keyring routes wrap and unwrap requests among providers. Its primary
// provider wraps new DEKs; decrypt-only providers open older wraps (another
// vault, or a KEK being migrated away from). Unwrap routes each stanza by the
// provider type and key id written in it, never by trial decryption; the
// provider then selects the exact KEK version the stanza names.
//
// A Keyring is safe for concurrent use.
type Keyring struct {
	primary   KeyProvider
	providers map[KeyRef]KeyProvider
	order     []KeyRef // primary first, then decrypt-only in the order given
}

// NewKeyring returns a keyring whose primary provider is primary and which
// can also unwrap with decryptOnly. Two providers with the same Ref are an
// error.
func NewKeyring(primary KeyProvider, decryptOnly ...KeyProvider) (*Keyring, error) {
	if primary == nil {
		return nil, errors.New("keyring: no primary provider")
	}
	r := &Keyring{primary: primary, providers: map[KeyRef]KeyProvider{}}
	for _, p := range append([]KeyProvider{primary}, decryptOnly...) {
		if p == nil {
			return nil, errors.New("keyring: nil provider")
		}
		ref := p.Ref()
		if _, dup := r.providers[ref]; dup {
			return nil, fmt.Errorf("keyring: provider %s configured twice", ref)
		}
		r.providers[ref] = p
		r.order = append(r.order, ref)
	}
	return r, nil
}

// Primary returns the provider that wraps new DEKs.
func (r *Keyring) Primary() KeyProvider { return r.primary }

// Provider returns the provider configured for ref, if any.
func (r *Keyring) Provider(ref KeyRef) (KeyProvider, bool) {
	p, ok := r.providers[ref]
	return p, ok
}

// Refs returns the Refs of all configured providers, primary first.
func (r *Keyring) Refs() []KeyRef { return append([]KeyRef(nil), r.order...) }

// Wrap wraps dek under the primary provider's current KEK version with ec
// bound, and returns a wrapped key with that one stanza.
func (r *Keyring) Wrap(ctx context.Context, dek DEK, ec Context) (*WrappedKey, error) {
	s, err := r.wrapStanza(ctx, r.primary, dek, ec)
	if err != nil {
		return nil, err
	}
	return &WrappedKey{Stanzas: []Stanza{s}}, nil
}

// GenerateDEK returns a fresh DEK and its wrap under the primary provider. If
// the primary implements DataKeyGenerator the vault generates the key;
// otherwise it comes from crypto/rand.
func (r *Keyring) GenerateDEK(ctx context.Context, ec Context) (DEK, *WrappedKey, error) {
	if err := ec.Validate(); err != nil {
		return nil, nil, err
	}
	if g, ok := r.primary.(DataKeyGenerator); ok {
		dek, s, err := g.GenerateDataKey(ctx, ec)
		if err == nil {
			if err := dek.Validate(); err != nil {
				dek.Zero()
				return nil, nil, fmt.Errorf("provider %s: generate data key: %w", r.primary.Ref(), err)
			}
			if err := checkStanza(r.primary, s); err != nil {
				dek.Zero()
				return nil, nil, err
			}
			if err := verifyStanza(ctx, r.primary, s, dek, ec); err != nil {
				dek.Zero()
				return nil, nil, err
			}
			return dek, &WrappedKey{Stanzas: []Stanza{s}}, nil
		}
		if !errors.Is(err, ErrUnsupported) {
			return nil, nil, fmt.Errorf("provider %s: generate data key: %w", r.primary.Ref(), err)
		}
	}
	dek, err := NewDEK()
	if err != nil {
		return nil, nil, err
	}
	wk, err := r.Wrap(ctx, dek, ec)
	if err != nil {
		dek.Zero()
		return nil, nil, err
	}
	return dek, wk, nil
}

func (r *Keyring) wrapStanza(ctx context.Context, p KeyProvider, dek DEK, ec Context) (Stanza, error) {
	if err := dek.Validate(); err != nil {
		return Stanza{}, err
	}
	if err := ec.Validate(); err != nil {
		return Stanza{}, err
	}
	s, err := p.WrapKey(ctx, dek, ec)
	if err != nil {
		return Stanza{}, fmt.Errorf("provider %s: wrap: %w", p.Ref(), err)
	}
	if err := checkStanza(p, s); err != nil {
		return Stanza{}, err
	}
	if err := verifyStanza(ctx, p, s, dek, ec); err != nil {
		return Stanza{}, err
	}
	return s, nil
}

// verifyStanza unwraps a new wrap and compares it with the DEK it should
// hold, so that a wrap that would not open (a faulty provider, a vault bug)
// is caught while the DEK is still at hand, not when it is needed.
func verifyStanza(ctx context.Context, p KeyProvider, s Stanza, dek DEK, ec Context) error {
	check, err := p.UnwrapKey(ctx, s, ec)
	if err != nil {
		return fmt.Errorf("provider %s: verify new wrap: %w", p.Ref(), err)
	}
	same := check.Equal(dek)
	check.Zero()
	if !same {
		return fmt.Errorf("provider %s: verify new wrap: unwrapped to a different DEK", p.Ref())
	}
	return nil
}

// checkStanza verifies that a provider returned a valid stanza under its own
// Ref, so a buggy or hostile plugin cannot produce a record that routes
// elsewhere.
func checkStanza(p KeyProvider, s Stanza) error {
	if s.Ref() != p.Ref() {
		return fmt.Errorf("provider %s returned a wrap naming %s", p.Ref(), s.Ref())
	}
	if err := s.Validate(); err != nil {
		return fmt.Errorf("provider %s returned an invalid wrap: %w", p.Ref(), err)
	}
	return nil
}

// Unwrap returns the DEK of wk, opened with ec by the first stanza, in
// record order, whose provider is configured. If a configured provider fails
// on its stanza, the next configured stanza is tried; the error then joins
// every failure. When no stanza names a configured provider the error wraps
// ErrNoProvider and names what the record asks for and what is configured.
func (r *Keyring) Unwrap(ctx context.Context, wk *WrappedKey, ec Context) (DEK, error) {
	dek, _, err := r.unwrap(ctx, wk, ec, -1)
	return dek, err
}

// unwrap is Unwrap that also returns the index of the stanza that opened,
// skipping stanza skip.
func (r *Keyring) unwrap(ctx context.Context, wk *WrappedKey, ec Context, skip int) (DEK, int, error) {
	var errs []error
	for i, s := range wk.Stanzas {
		if i == skip {
			continue
		}
		p, ok := r.providers[s.Ref()]
		if !ok {
			continue
		}
		dek, err := p.UnwrapKey(ctx, s, ec)
		if err == nil {
			if verr := dek.Validate(); verr != nil {
				dek.Zero()
				err = fmt.Errorf("returned a bad DEK: %w", verr)
			} else {
				return dek, i, nil
			}
		}
		errs = append(errs, fmt.Errorf("provider %s: unwrap with key version %q: %w", s.Ref(), s.KeyVersion, err))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, -1, r.noProvider(wk)
	}
	return nil, -1, errors.Join(errs...)
}

func (r *Keyring) noProvider(wk *WrappedKey) error {
	asked := make([]string, len(wk.Stanzas))
	for i, s := range wk.Stanzas {
		asked[i] = fmt.Sprintf("%s version %q", s.Ref(), s.KeyVersion)
	}
	have := make([]string, len(r.order))
	for i, ref := range r.order {
		have[i] = ref.String()
	}
	return fmt.Errorf("wrapped key asks for %s; configured: %s: %w",
		strings.Join(asked, ", "), strings.Join(have, ", "), ErrNoProvider)
}

// RewrapStatus says what Rewrap did.
type RewrapStatus int

// Outcomes of Rewrap.
const (
	// RewrapFailed: nothing changed; the error says why.
	RewrapFailed RewrapStatus = iota
	// AlreadyCurrent: the record already had a wrap under the primary
	// provider's current KEK version; it is returned unchanged.
	AlreadyCurrent
	// Rewrapped: a wrap under the primary's current KEK version replaced the
	// primary KEK's older wraps.
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

// Rewrapper moves wrapped keys onto the primary provider's current KEK
// version. It reads the current version once; create a new one after
// rotating. It is safe for concurrent use.
type Rewrapper struct {
	ring    *Keyring
	current string

	// VerifyCurrent makes Rewrap open a record's wrap under the current
	// version before calling it already current, instead of trusting the
	// labels in the record. A current-version wrap that does not open is
	// replaced from the record's other wraps. It costs one unwrap per
	// record.
	VerifyCurrent bool
}

// NewRewrapper returns a Rewrapper for r, reading the primary's current KEK
// version now.
func (r *Keyring) NewRewrapper(ctx context.Context) (*Rewrapper, error) {
	v, err := r.primary.CurrentVersion(ctx)
	if err != nil {
		return nil, fmt.Errorf("provider %s: current version: %w", r.primary.Ref(), err)
	}
	return &Rewrapper{ring: r, current: v}, nil
}

// Rewrap returns wk moved onto the primary provider's current KEK version.
//
// If wk already has a stanza under that version it is returned unchanged with
// AlreadyCurrent. Otherwise the DEK is opened (with any configured provider),
// wrapped under the primary, and the new wrap is verified by unwrapping it and
// comparing with the original DEK before the result is built: the new stanza
// replaces the primary KEK's older stanzas and is placed first; stanzas of
// other KEKs are kept. wk itself is never modified, so a failure at any point
// loses nothing.
func (rw *Rewrapper) Rewrap(ctx context.Context, wk *WrappedKey, ec Context) (*WrappedKey, RewrapStatus, error) {
	primary := rw.ring.primary
	ref := primary.Ref()
	broken := -1 // a current-version wrap that failed VerifyCurrent
	for i, s := range wk.Stanzas {
		if s.Ref() != ref || s.KeyVersion != rw.current {
			continue
		}
		if !rw.VerifyCurrent {
			return wk, AlreadyCurrent, nil
		}
		d, err := primary.UnwrapKey(ctx, s, ec)
		if err == nil && d.Validate() == nil {
			d.Zero()
			return wk, AlreadyCurrent, nil
		}
		d.Zero()
		if ctx.Err() != nil {
			return nil, RewrapFailed, ctx.Err()
		}
		broken = i
	}
	dek, opened, err := rw.ring.unwrap(ctx, wk, ec, broken)
	if err != nil {
		return nil, RewrapFailed, err
	}
	defer dek.Zero()
	s, err := rw.ring.wrapStanza(ctx, primary, dek, ec)
	if err != nil {
		return nil, RewrapFailed, err
	}
	out := &WrappedKey{Stanzas: make([]Stanza, 0, len(wk.Stanzas)+1)}
	out.Stanzas = append(out.Stanzas, s)
	for i, o := range wk.Stanzas {
		if o.Ref() != ref {
			out.Stanzas = append(out.Stanzas, o) // another KEK's wrap stays
			continue
		}
		drop, err := rw.replaceable(ctx, o, i == opened || i == broken, dek, ec)
		if err != nil {
			return nil, RewrapFailed, fmt.Errorf("rewrap: wrap %d (%s version %q): %w", i, ref, o.KeyVersion, err)
		}
		if !drop {
			out.Stanzas = append(out.Stanzas, o)
		}
	}
	if err := out.Validate(); err != nil {
		return nil, RewrapFailed, fmt.Errorf("rewrap: %w", err)
	}
	return out, Rewrapped, nil
}

// replaceable decides whether an older wrap under the primary KEK may be
// dropped now that the DEK is wrapped under the current version: only if it
// is known to hold the same DEK (it is the wrap that was opened, or it opens
// to the same DEK), or if it can never open again (its version is gone, or it
// is the broken current-version wrap). A wrap that opens to another DEK means
// the record is inconsistent: the rewrap fails and changes nothing. A wrap
// that cannot be checked now (a disabled version, say) is kept.
func (rw *Rewrapper) replaceable(ctx context.Context, o Stanza, known bool, dek DEK, ec Context) (bool, error) {
	if known || o.KeyVersion == rw.current {
		return true, nil
	}
	d, err := rw.ring.primary.UnwrapKey(ctx, o, ec)
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
// When the primary provider implements [BatchProvider] (and VerifyCurrent
// is off), items whose first configured wrap is the primary's own are
// rewrapped in batches by [BatchProvider.RewrapKeys] (see batch.go).
func (rw *Rewrapper) RewrapAll(ctx context.Context, items []RewrapItem, workers int) []RewrapResult {
	if bp, ok := rw.ring.primary.(BatchProvider); ok && !rw.VerifyCurrent {
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
