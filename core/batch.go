package core

import (
	"context"

	"fmt"
	"sync"
)

// WrapRequest is one item of [BatchProvider.WrapKeys].
type WrapRequest struct {
	DEK     DEK
	Context Context
}

// UnwrapRequest is one item of [BatchProvider.UnwrapKeys] and
// [BatchProvider.RewrapKeys].
type UnwrapRequest struct {
	Stanza  Stanza
	Context Context
}

// StanzaResult is the outcome of one wrap or rewrap item.
type StanzaResult struct {
	Stanza Stanza
	Err    error
}

// DEKResult is the outcome of one unwrap item; the caller owns DEK.
type DEKResult struct {
	DEK DEK
	Err error
}

// BatchProvider is implemented by providers for which one call carrying many
// items costs much less than many calls, such as a provider in another
// process (the plugin client). Each method returns one result per item, in
// order; item errors are those of the single-item method. When ctx is done,
// the items not yet done get ctx's error.
type BatchProvider interface {
	KeyProvider
	// WrapKeys is WrapKey for many items.
	WrapKeys(ctx context.Context, items []WrapRequest) []StanzaResult
	// UnwrapKeys is UnwrapKey for many items.
	UnwrapKeys(ctx context.Context, items []UnwrapRequest) []DEKResult
	// RewrapKeys moves each item's stanza, which must name this provider's
	// Ref, onto the current KEK version: the provider unwraps it, wraps the
	// DEK under the current version, unwraps the new wrap and checks that
	// it gives the same DEK, as [Rewrapper.Rewrap] does, and returns the
	// new stanza. The DEK does not leave the provider.
	RewrapKeys(ctx context.Context, items []UnwrapRequest) []StanzaResult
}

// rewrapBatchSize is the number of items RewrapAll hands to
// BatchProvider.RewrapKeys at once.
const rewrapBatchSize = 2048

// rewrapAllBatch is RewrapAll for a primary that implements BatchProvider.
// An item whose first configured stanza is the primary's own goes to
// RewrapKeys in batches; every other item, and an item whose batched rewrap
// failed with an input error while it has other configured stanzas to try,
// goes through Rewrap as before.
func (rw *Rewrapper) rewrapAllBatch(ctx context.Context, bp BatchProvider, items []RewrapItem, workers int) []RewrapResult {
	out := make([]RewrapResult, len(items))
	ref := bp.Ref()
	var batched, single []int
	for i, it := range items {
		out[i] = RewrapResult{Key: it.Key, Status: RewrapFailed}
		if it.Key == nil {
			out[i].Err = fmt.Errorf("rewrap: nil wrapped key: %w", ErrMalformed)
			continue
		}
		c := rw.Plan(it.Key)
		if c.Current {
			out[i].Status = AlreadyCurrent
			continue
		}
		// Batch only the plain case: the target's own wrap opens first, is
		// its only wrap and the only one replaced, so the provider-verified
		// rewrap replaces exactly that wrap. Other records go through
		// Rewrap, which checks each wrap before dropping it.
		if s, ok := rw.firstConfigured(it.Key); ok && s.Ref() == ref && rw.refStanzas(it.Key, ref) == 1 && len(c.Replace) == 1 {
			batched = append(batched, i)
		} else {
			single = append(single, i)
		}
	}

	var mu sync.Mutex // guards single
	chunks := make(chan []int)
	var wg sync.WaitGroup
	for range max(1, workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for idx := range chunks {
				if err := ctx.Err(); err != nil {
					for _, i := range idx {
						out[i].Err = err
					}
					continue
				}
				reqs := make([]UnwrapRequest, len(idx))
				for j, i := range idx {
					s, _ := rw.firstConfigured(items[i].Key)
					reqs[j] = UnwrapRequest{Stanza: s, Context: items[i].Context}
				}
				res := bp.RewrapKeys(ctx, reqs)
				for j, i := range idx {
					var r StanzaResult
					if j < len(res) {
						r = res[j]
					} else {
						r.Err = fmt.Errorf("provider %s: rewrap: no result for item %d: %w", ref, j, ErrUnavailable)
					}
					if r.Err == nil {
						r.Err = checkStanza(bp, r.Stanza)
					}
					if r.Err != nil {
						if IsInputError(r.Err) && rw.configuredStanzas(items[i].Key) > 1 {
							mu.Lock()
							single = append(single, i)
							mu.Unlock()
							continue
						}
						out[i].Err = fmt.Errorf("provider %s: rewrap from key version %q: %w", ref, reqs[j].Stanza.KeyVersion, r.Err)
						continue
					}
					k, err := rw.replace(items[i].Key, r.Stanza)
					if err != nil {
						out[i].Err = err
						continue
					}
					out[i] = RewrapResult{Key: k, Status: Rewrapped}
				}
			}
		}()
	}
	for len(batched) > 0 {
		n := min(rewrapBatchSize, len(batched))
		chunks <- batched[:n]
		batched = batched[n:]
	}
	close(chunks)
	wg.Wait()

	if len(single) > 0 {
		sub := make([]RewrapItem, len(single))
		for j, i := range single {
			sub[j] = items[i]
		}
		for j, r := range rw.rewrapAllSingle(ctx, sub, workers) {
			out[single[j]] = r
		}
	}
	return out
}

// firstConfigured returns the stanza Keyring.Unwrap would try first.
func (rw *Rewrapper) firstConfigured(wk *WrappedKey) (Stanza, bool) {
	for _, s := range wk.Stanzas {
		if _, ok := rw.ring.providers[s.Ref()]; ok {
			return s, true
		}
	}
	return Stanza{}, false
}

func (rw *Rewrapper) refStanzas(wk *WrappedKey, ref KeyRef) int {
	n := 0
	for _, s := range wk.Stanzas {
		if s.Ref() == ref {
			n++
		}
	}
	return n
}

func (rw *Rewrapper) configuredStanzas(wk *WrappedKey) int {
	n := 0
	for _, s := range wk.Stanzas {
		if _, ok := rw.ring.providers[s.Ref()]; ok {
			n++
		}
	}
	return n
}

// replace builds the rewrapped record as Rewrap does: the target's older
// stanza (there is exactly one: see rewrapAllBatch) replaced by s, first when
// the target is the primary, last otherwise; the others kept.
func (rw *Rewrapper) replace(wk *WrappedKey, s Stanza) (*WrappedKey, error) {
	ref := rw.target.Ref()
	out := &WrappedKey{Stanzas: make([]Stanza, 0, len(wk.Stanzas)+1)}
	if rw.first {
		out.Stanzas = append(out.Stanzas, s)
	}
	for _, o := range wk.Stanzas {
		if o.Ref() != ref {
			out.Stanzas = append(out.Stanzas, o)
		}
	}
	if !rw.first {
		out.Stanzas = append(out.Stanzas, s)
	}
	if len(out.Stanzas) > MaxStanzas {
		return nil, fmt.Errorf("rewrap: result would hold %d wraps, limit %d: %w", len(out.Stanzas), MaxStanzas, ErrMalformed)
	}
	return out, nil
}
