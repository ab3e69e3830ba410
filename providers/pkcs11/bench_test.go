//go:build cgo

package pkcs11_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/pkcs11"
)

// BenchmarkSoftHSM wraps and unwraps a 32-byte DEK through the provider
// (impl=keyctl) and through a bare miekg/pkcs11 C_EncryptInit+C_Encrypt /
// C_DecryptInit+C_Decrypt loop on the same token key (impl=bare, the floor:
// the same AES-GCM work on the token, a fresh random IV and associated data
// of the same length, one session per caller), side by side, with 1 and 4
// concurrent callers. Each sub-benchmark reports ops/s; compare keyctl's to
// bare's (benchstat -col /impl). See docs/pkcs11.md.
func BenchmarkSoftHSM(b *testing.B) {
	h := newHSM(b)
	cfg := h.config("bench")
	cfg.Sessions = 4
	p := create(b, cfg)
	ctx := context.Background()
	dek := newDEK(b)
	st := mustWrap(b, p, dek)

	c, _ := raw(b, h)
	key, slot := benchKey(b, c, h, st)
	ad := make([]byte, len(benchAD(st)))
	sessions := make([]p11.SessionHandle, 4)
	for i := range sessions {
		sh, err := c.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			b.Fatal(err)
		}
		sessions[i] = sh
		b.Cleanup(func() { _ = c.CloseSession(sh) })
	}
	bareEncrypt := func(sh p11.SessionHandle) ([]byte, error) {
		iv := make([]byte, 12)
		if _, err := rand.Read(iv); err != nil {
			return nil, err
		}
		params := p11.NewGCMParams(iv, ad, 128)
		defer params.Free()
		if err := c.EncryptInit(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, key); err != nil {
			return nil, err
		}
		ct, err := c.Encrypt(sh, dek)
		return append(iv, ct...), err
	}
	bareCT, err := bareEncrypt(sessions[0])
	if err != nil {
		b.Fatal(err)
	}
	bareDecrypt := func(sh p11.SessionHandle) error {
		params := p11.NewGCMParams(bareCT[:12], ad, 128)
		defer params.Free()
		if err := c.DecryptInit(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, key); err != nil {
			return err
		}
		_, err := c.Decrypt(sh, bareCT[12:])
		return err
	}

	type impl struct {
		name string
		op   func(caller int) error
	}
	for _, op := range []string{"wrap", "unwrap"} {
		impls := []impl{
			{"bare", func(i int) error {
				if op == "wrap" {
					_, err := bareEncrypt(sessions[i])
					return err
				}
				return bareDecrypt(sessions[i])
			}},
			{"keyctl", func(int) error {
				if op == "wrap" {
					_, err := p.WrapKey(ctx, dek, ec)
					return err
				}
				d, err := p.UnwrapKey(ctx, st, ec)
				d.Zero()
				return err
			}},
		}
		for _, callers := range []int{1, 4} {
			for _, im := range impls {
				b.Run(fmt.Sprintf("op=%s/callers=%d/impl=%s", op, callers, im.name), func(b *testing.B) {
					runCallers(b, callers, im.op)
				})
			}
		}
	}
}

// runCallers runs b.N operations spread over callers goroutines and reports
// ops/s.
func runCallers(b *testing.B, callers int, op func(caller int) error) {
	b.ReportAllocs()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	start := time.Now()
	b.ResetTimer()
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := op(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
}

// benchKey finds the token key of the stanza's version and its slot.
func benchKey(b *testing.B, c *p11.Ctx, h *hsm, st core.Stanza) (p11.ObjectHandle, uint) {
	b.Helper()
	slots, err := c.GetSlotList(true)
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range slots {
		if ti, err := c.GetTokenInfo(s); err == nil && ti.Label == h.token {
			sh, err := c.OpenSession(s, p11.CKF_SERIAL_SESSION)
			if err != nil {
				b.Fatal(err)
			}
			defer c.CloseSession(sh)
			return findKey(b, c, sh, "bench", []byte{0, 0, 0, 1}), s
		}
	}
	b.Fatal("token not found")
	return 0, 0
}

// benchAD has the length of the provider's associated data for st.
func benchAD(st core.Stanza) []byte {
	n := 4*4 + len(pkcs11.GCMDomain) + len(st.KeyID) + len(st.KeyVersion) + len(ec.Canonical())
	return make([]byte, n)
}
