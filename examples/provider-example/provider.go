package main

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/plugin"
)

// Type is the provider type this plugin serves.
const Type = "example"

// alg is a private-use algorithm code: AES-256-GCM, nonce || ciphertext.
const alg = core.AlgPrivateMin

// Definition is what main serves: the type, the schema of its block in
// keyctl.hcl, and the constructor.
var Definition = plugin.Provider{
	Type: Type,
	Schema: plugin.Schema{Attributes: []plugin.Attribute{
		{Name: "key_id", Type: plugin.String, Required: true, Description: "The KEK id written in stanzas."},
		{Name: "key", Type: plugin.String, Secret: true, Required: true, Description: "The KEK, 64 hex digits, from env()."},
	}},
	Open: func(_ context.Context, v plugin.Values) (core.KeyProvider, error) {
		key, ok := v.Secret("key")
		if !ok {
			return nil, &plugin.NeedSecretError{Attribute: "key", For: "example KEK " + v.String("key_id"), What: "the example provider needs its key"}
		}
		return New(v.String("key_id"), string(key))
	},
}

// Provider wraps DEKs under one AES-256 key.
type Provider struct {
	ref  core.KeyRef
	aead cipher.AEAD
}

// New returns a provider for keyID with the hex key keyHex.
func New(keyID, keyHex string) (*Provider, error) {
	key, err := hex.DecodeString(keyHex)
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("example: key must be 64 hex digits: %w", core.ErrMalformed)
	}
	defer clear(key)
	if keyID == "" {
		return nil, fmt.Errorf("example: empty key_id: %w", core.ErrMalformed)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Provider{ref: core.KeyRef{Provider: Type, KeyID: keyID}, aead: aead}, nil
}

func (p *Provider) Ref() core.KeyRef { return p.ref }

func (p *Provider) CurrentVersion(ctx context.Context) (string, error) { return "1", ctx.Err() }

func (p *Provider) ad(ec core.Context) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(p.ref.KeyID)))
	b = append(b, p.ref.KeyID...)
	return append(b, ec.Canonical()...)
}

func (p *Provider) WrapKey(ctx context.Context, dek core.DEK, ec core.Context) (core.Stanza, error) {
	if err := ctx.Err(); err != nil {
		return core.Stanza{}, err
	}
	if err := dek.Validate(); err != nil {
		return core.Stanza{}, err
	}
	if err := ec.Validate(); err != nil {
		return core.Stanza{}, err
	}
	nonce := make([]byte, p.aead.NonceSize(), p.aead.NonceSize()+len(dek)+p.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return core.Stanza{}, err
	}
	data := p.aead.Seal(nonce, nonce, dek, p.ad(ec))
	return core.Stanza{Provider: Type, KeyID: p.ref.KeyID, KeyVersion: "1", Algorithm: alg, Data: data}, nil
}

func (p *Provider) UnwrapKey(ctx context.Context, s core.Stanza, ec core.Context) (core.DEK, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch {
	case s.Ref() != p.ref:
		return nil, fmt.Errorf("example: stanza names %s: %w", s.Ref(), core.ErrNoProvider)
	case s.KeyVersion != "1":
		return nil, fmt.Errorf("example: key version %q: %w", s.KeyVersion, core.ErrKeyNotFound)
	case s.Algorithm != alg:
		return nil, fmt.Errorf("example: algorithm %s: %w", s.Algorithm, core.ErrUnknownAlgorithm)
	case len(s.Data) < p.aead.NonceSize():
		return nil, fmt.Errorf("example: %w", core.ErrUnwrapFailed)
	}
	if err := ec.Validate(); err != nil {
		return nil, err
	}
	n := p.aead.NonceSize()
	dek, err := p.aead.Open(nil, s.Data[:n], s.Data[n:], p.ad(ec))
	if err != nil {
		return nil, fmt.Errorf("example: key %s: %w", p.ref.KeyID, core.ErrUnwrapFailed)
	}
	return core.DEK(dek), nil
}
