package core_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyctl/keyctl/core"
)

// memProvider is an in-memory AES-256-GCM provider for core's unit tests.
type memProvider struct {
	ref core.KeyRef

	mu      sync.Mutex
	aeads   []cipher.AEAD // version i+1
	wraps   atomic.Int64
	unwraps atomic.Int64
	failAll error // when set, every call fails with it
}

func newMem(keyID string) *memProvider {
	p := &memProvider{ref: core.KeyRef{Provider: "mem", KeyID: keyID}}
	if _, err := p.RotateKey(context.Background()); err != nil {
		panic(err)
	}
	return p
}

func (p *memProvider) Ref() core.KeyRef { return p.ref }

func (p *memProvider) CurrentVersion(ctx context.Context) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strconv.Itoa(len(p.aeads)), nil
}

func (p *memProvider) RotateKey(ctx context.Context) (string, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return "", err
	}
	b, _ := aes.NewCipher(k)
	a, _ := cipher.NewGCM(b)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.aeads = append(p.aeads, a)
	return strconv.Itoa(len(p.aeads)), nil
}

func (p *memProvider) ad(version string, ec core.Context) []byte {
	out := binary.BigEndian.AppendUint16(nil, uint16(len(p.ref.KeyID)))
	out = append(out, p.ref.KeyID...)
	out = binary.BigEndian.AppendUint16(out, uint16(len(version)))
	out = append(out, version...)
	return append(out, ec.Canonical()...)
}

func (p *memProvider) WrapKey(ctx context.Context, dek core.DEK, ec core.Context) (core.Stanza, error) {
	if err := ctx.Err(); err != nil {
		return core.Stanza{}, err
	}
	if p.failAll != nil {
		return core.Stanza{}, p.failAll
	}
	if err := dek.Validate(); err != nil {
		return core.Stanza{}, err
	}
	if err := ec.Validate(); err != nil {
		return core.Stanza{}, err
	}
	p.wraps.Add(1)
	p.mu.Lock()
	v := len(p.aeads)
	a := p.aeads[v-1]
	p.mu.Unlock()
	ver := strconv.Itoa(v)
	nonce := make([]byte, 12, 12+32+16)
	if _, err := rand.Read(nonce); err != nil {
		return core.Stanza{}, err
	}
	data := a.Seal(nonce, nonce, dek, p.ad(ver, ec))
	return core.Stanza{Provider: p.ref.Provider, KeyID: p.ref.KeyID, KeyVersion: ver, Algorithm: core.AlgAES256GCM, Data: data}, nil
}

func (p *memProvider) UnwrapKey(ctx context.Context, s core.Stanza, ec core.Context) (core.DEK, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if p.failAll != nil {
		return nil, p.failAll
	}
	p.unwraps.Add(1)
	if s.Ref() != p.ref {
		return nil, fmt.Errorf("stanza for %s: %w", s.Ref(), core.ErrNoProvider)
	}
	v, err := strconv.Atoi(s.KeyVersion)
	p.mu.Lock()
	n := len(p.aeads)
	p.mu.Unlock()
	if err != nil || v < 1 || v > n {
		return nil, fmt.Errorf("version %q: %w", s.KeyVersion, core.ErrKeyNotFound)
	}
	if len(s.Data) < 12+16 {
		return nil, core.ErrUnwrapFailed
	}
	p.mu.Lock()
	a := p.aeads[v-1]
	p.mu.Unlock()
	out, err := a.Open(nil, s.Data[:12], s.Data[12:], p.ad(s.KeyVersion, ec))
	if err != nil {
		return nil, core.ErrUnwrapFailed
	}
	return out, nil
}

var testNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
