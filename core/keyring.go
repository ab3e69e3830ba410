package core

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	return r.unwrapWhere(ctx, wk, ec, func(i int) bool { return i != skip })
}

// unwrapWhere is Unwrap over the stanzas i for which try(i) holds.
func (r *Keyring) unwrapWhere(ctx context.Context, wk *WrappedKey, ec Context, try func(i int) bool) (DEK, int, error) {
	var errs []error
	for i, s := range wk.Stanzas {
		if !try(i) {
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
