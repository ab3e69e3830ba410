//go:build cgo

package pkcs11_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/pkcs11"
	softhsmtest "github.com/keyctl/keyctl/softhsm-test"
)

// TestTokenReinitialisedExternally re-initialises the token from another
// process (softhsm2-util, same label and PIN) under an open provider and
// makes a new key with the KEK's label there: the provider's cached handles
// are stale, it reloads them, wraps under the new key, and reports the old
// version as gone.
func TestTokenReinitialisedExternally(t *testing.T) {
	h := newHSM(t)
	h.Keygen(t, h.token, softhsmtest.UserPIN, "reinit", softhsmtest.KeyOptions{ID: "01"})
	p := open(t, h.config("reinit"))
	ctx := context.Background()
	dek := newDEK(t)
	old := mustWrap(t, p, dek)
	h.Run(t, "softhsm2-util", "--init-token", "--token", h.token, "--label", h.token, "--so-pin", softhsmtest.SOPIN, "--pin", softhsmtest.UserPIN)
	h.Keygen(t, h.token, softhsmtest.UserPIN, "reinit", softhsmtest.KeyOptions{ID: "02"})

	s := mustWrap(t, p, dek)
	if s.KeyVersion != "02" {
		t.Fatalf("wrap after re-init used version %q, want 02", s.KeyVersion)
	}
	mustUnwrap(t, p, s, dek)
	_, err := p.UnwrapKey(ctx, old, ec)
	checkErr(t, err, core.ErrKeyNotFound, h.token, "reinit")
	if err := p.Health(ctx); err != nil {
		t.Fatalf("Health: %v", err)
	}
}

// TestHealthReportsMissingKey destroys the current version under the
// provider.
func TestHealthReportsMissingKey(t *testing.T) {
	h := newHSM(t)
	h.Keygen(t, h.token, softhsmtest.UserPIN, "health", softhsmtest.KeyOptions{ID: "01"})
	p := open(t, h.config("health"))
	if err := p.Health(context.Background()); err != nil {
		t.Fatalf("Health: %v", err)
	}
	h.Run(t, "pkcs11-tool", "--module", h.Module, "--token-label", h.token, "--login", "--pin", softhsmtest.UserPIN,
		"--delete-object", "--type", "secrkey", "--label", "health", "--id", "01")
	err := p.Health(context.Background())
	checkErr(t, err, core.ErrKeyNotFound, h.token, "health")
	_, err = p.WrapKey(context.Background(), newDEK(t), ec)
	checkErr(t, err, core.ErrKeyNotFound, h.token, "health")
}

// TestCloseWhileBusy closes a provider while callers are wrapping: calls
// either succeed or fail with core.ErrUnavailable, and nothing crashes.
func TestCloseWhileBusy(t *testing.T) {
	h := newHSM(t)
	cfg := h.config("busy")
	cfg.Sessions = 2
	p := create(t, cfg)
	dek := newDEK(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				if _, err := p.WrapKey(context.Background(), dek, ec); err != nil {
					if !errors.Is(err, core.ErrUnavailable) {
						errs <- err
					}
					return
				}
			}
		}()
	}
	time.Sleep(5 * time.Millisecond)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, err := p.CurrentVersion(context.Background()); !errors.Is(err, core.ErrUnavailable) {
		t.Fatalf("CurrentVersion after Close: %v", err)
	}
}

func TestVersionsAndDestroy(t *testing.T) {
	h := newHSM(t)
	h.Keygen(t, h.token, softhsmtest.UserPIN, "vers", softhsmtest.KeyOptions{ID: "01"})
	h.Keygen(t, h.token, softhsmtest.UserPIN, "vers", softhsmtest.KeyOptions{ID: "02"})
	h.Keygen(t, h.token, softhsmtest.UserPIN, "vers", softhsmtest.KeyOptions{ID: "02"})
	h.Keygen(t, h.token, softhsmtest.UserPIN, "vers", softhsmtest.KeyOptions{ID: "03", Bytes: 16})
	h.Keygen(t, h.token, softhsmtest.UserPIN, "vers", softhsmtest.KeyOptions{ID: "04"})
	p := open(t, h.config("vers"))
	ctx := context.Background()
	vs, err := p.Versions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []pkcs11.VersionInfo{
		{Version: "01", Usable: true, Objects: 1},
		{Version: "02", Usable: true, Objects: 2},
		{Version: "03", Usable: false, Objects: 1},
		{Version: "04", Usable: true, Objects: 1, Current: true},
	}
	if !slices.Equal(vs, want) {
		t.Fatalf("Versions = %+v\nwant %+v", vs, want)
	}
	dek := newDEK(t)
	s04 := mustWrap(t, p, dek)
	s01 := s04
	s01.KeyVersion = "01"
	for v, sentinel := range map[string]error{"04": pkcs11.ErrCurrentVersion, "02": pkcs11.ErrAmbiguousKey, "09": core.ErrKeyNotFound} {
		err := p.DestroyVersion(ctx, v)
		checkErr(t, err, sentinel, h.token, "vers", v)
	}
	if !errors.Is(pkcs11.ErrCurrentVersion, core.ErrFailedPrecondition) {
		t.Fatal("ErrCurrentVersion does not wrap ErrFailedPrecondition")
	}
	if err := p.DestroyVersion(ctx, "01"); err != nil {
		t.Fatalf("DestroyVersion(01): %v", err)
	}
	_, err = p.UnwrapKey(ctx, s01, ec)
	checkErr(t, err, core.ErrKeyNotFound, h.token, "vers")
	mustUnwrap(t, p, s04, dek)
	if vs, _ := p.Versions(ctx); len(vs) != 3 || vs[0].Version != "02" {
		t.Fatalf("after destroy: %+v", vs)
	}
}

// TestReusedHandleDetected points the provider's cached handle of its
// current version at another key, as a module that hands a destroyed
// object's handle to a new object would: the wrap must not use that key.
func TestReusedHandleDetected(t *testing.T) {
	h := newHSM(t)
	a := create(t, h.config("reuse-a"))
	create(t, h.config("reuse-b"))
	c, sh := raw(t, h)
	other := findKey(t, c, sh, "reuse-b", []byte{0, 0, 0, 1})
	pkcs11.PointCurrentAt(a, uint(other))
	dek := newDEK(t)
	s := mustWrap(t, a, dek)
	fresh := open(t, h.config("reuse-a")) // fresh handles
	mustUnwrap(t, fresh, s, dek)
}
