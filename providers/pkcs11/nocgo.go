//go:build !cgo

package pkcs11

import (
	"context"
	"fmt"

	"github.com/keyctl/keyctl/core"
)

// Available reports whether this build has the PKCS#11 provider (it needs
// cgo). It is false in this build, made with CGO_ENABLED=0.
const Available = false

// ErrAmbiguousKey reports that the token holds several keys with the KEK's
// label that keyctl cannot tell apart. It wraps core.ErrFailedPrecondition.
var ErrAmbiguousKey = fmt.Errorf("several keys with the same label and CKA_ID: %w", core.ErrFailedPrecondition)

// ErrCurrentVersion reports an operation refused on the current KEK version.
// It wraps core.ErrFailedPrecondition.
var ErrCurrentVersion = fmt.Errorf("refused on the current key version: %w", core.ErrFailedPrecondition)

// VersionInfo describes one KEK version (see the cgo build).
type VersionInfo struct {
	Version string
	Current bool
	Usable  bool
	Objects int
}

// errNoCgo is returned by every entry point of a cgo-less build.
var errNoCgo = fmt.Errorf("pkcs11: this keyctl was built without cgo (CGO_ENABLED=0), and the PKCS#11 provider needs it: rebuild with CGO_ENABLED=1 and a C compiler (gcc): %w", core.ErrUnsupported)

// Provider is the PKCS#11 provider. In a build without cgo it cannot be
// created: New and CreateKey fail with an error wrapping core.ErrUnsupported.
type Provider struct{}

// New fails in a build without cgo, with an error wrapping
// core.ErrUnsupported; the config is still validated first.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return nil, errNoCgo
}

// CreateKey fails in a build without cgo, like New.
func CreateKey(ctx context.Context, cfg Config) (*Provider, error) { return New(ctx, cfg) }

// Ref returns the provider type only.
func (p *Provider) Ref() core.KeyRef { return core.KeyRef{Provider: Type} }

// Mechanism returns "".
func (p *Provider) Mechanism() string { return "" }

// Close does nothing.
func (p *Provider) Close() error { return nil }

// CurrentVersion fails: no cgo.
func (p *Provider) CurrentVersion(context.Context) (string, error) { return "", errNoCgo }

// WrapKey fails: no cgo.
func (p *Provider) WrapKey(context.Context, core.DEK, core.Context) (core.Stanza, error) {
	return core.Stanza{}, errNoCgo
}

// UnwrapKey fails: no cgo.
func (p *Provider) UnwrapKey(context.Context, core.Stanza, core.Context) (core.DEK, error) {
	return nil, errNoCgo
}

// RewrapKey fails: no cgo.
func (p *Provider) RewrapKey(context.Context, core.Stanza, core.Context) (core.Stanza, error) {
	return core.Stanza{}, errNoCgo
}

// GenerateDataKey fails: no cgo.
func (p *Provider) GenerateDataKey(context.Context, core.Context) (core.DEK, core.Stanza, error) {
	return nil, core.Stanza{}, errNoCgo
}

// RotateKey fails: no cgo.
func (p *Provider) RotateKey(context.Context) (string, error) { return "", errNoCgo }

// Location returns "".
func (p *Provider) Location() string { return "" }

// Versions fails: no cgo.
func (p *Provider) Versions(context.Context) ([]VersionInfo, error) { return nil, errNoCgo }

// DestroyVersion fails: no cgo.
func (p *Provider) DestroyVersion(context.Context, string) error { return errNoCgo }

// Health fails: no cgo.
func (p *Provider) Health(context.Context) error { return errNoCgo }

var (
	_ core.KeyProvider      = (*Provider)(nil)
	_ core.KeyRotator       = (*Provider)(nil)
	_ core.VaultRewrapper   = (*Provider)(nil)
	_ core.DataKeyGenerator = (*Provider)(nil)
	_ core.HealthChecker    = (*Provider)(nil)
)
