//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/localfile"
	"github.com/keyctl/keyctl/providers/pkcs11"
	softhsmtest "github.com/keyctl/keyctl/softhsm-test"
)

var ec = core.Context{"table": "users", "column": "email"}

func newDEK(t testing.TB) core.DEK {
	t.Helper()
	d, err := core.NewDEK()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func mustWrap(t testing.TB, p core.KeyProvider, dek core.DEK) core.Stanza {
	t.Helper()
	s, err := p.WrapKey(context.Background(), dek, ec)
	if err != nil {
		t.Fatalf("WrapKey: %v", err)
	}
	return s
}

func mustUnwrap(t testing.TB, p core.KeyProvider, s core.Stanza, want core.DEK) {
	t.Helper()
	got, err := p.UnwrapKey(context.Background(), s, ec)
	if err != nil {
		t.Fatalf("UnwrapKey: %v", err)
	}
	if !got.Equal(want) {
		t.Fatal("UnwrapKey returned another DEK")
	}
}

// checkErr checks that err wraps sentinel, is one line, names the token and
// the key label, and does not contain the PIN.
func checkErr(t *testing.T, err error, sentinel error, mustName ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one wrapping %v", sentinel)
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("error %q does not wrap %v", err, sentinel)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	for _, s := range mustName {
		if !strings.Contains(msg, s) {
			t.Errorf("error %q does not name %q", msg, s)
		}
	}
	for _, secret := range []string{softhsmtest.UserPIN, softhsmtest.SOPIN, "wrong-pin-9876"} {
		if strings.Contains(msg, secret) {
			t.Errorf("error %q contains a PIN", msg)
		}
	}
}

// raw opens a bare miekg/pkcs11 session on the test token, logged in, for
// tests that look behind the provider. Call it while a provider is open, so
// that the module is already initialised (raw never finalises it).
func raw(t testing.TB, h *hsm) (*p11.Ctx, p11.SessionHandle) {
	t.Helper()
	c := p11.New(h.Module)
	if c == nil {
		t.Fatal("cannot load module")
	}
	if err := c.Initialize(); err != nil && !errors.Is(err, p11.Error(p11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatal(err)
	}
	slots, err := c.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err != nil || ti.Label != h.token {
			continue
		}
		sh, err := c.OpenSession(s, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Login(sh, p11.CKU_USER, softhsmtest.UserPIN); err != nil && !errors.Is(err, p11.Error(p11.CKR_USER_ALREADY_LOGGED_IN)) {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.CloseSession(sh); c.Destroy() })
		return c, sh
	}
	t.Fatalf("token %q not found", h.token)
	return nil, 0
}

// findKey returns the handle of the key with label and CKA_ID id.
func findKey(t testing.TB, c *p11.Ctx, sh p11.SessionHandle, label string, id []byte) p11.ObjectHandle {
	t.Helper()
	if err := c.FindObjectsInit(sh, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_LABEL, label), p11.NewAttribute(p11.CKA_ID, id),
	}); err != nil {
		t.Fatal(err)
	}
	hs, _, err := c.FindObjects(sh, 10)
	_ = c.FindObjectsFinal(sh)
	if err != nil || len(hs) != 1 {
		t.Fatalf("find key %s/%x: %d objects, %v", label, id, len(hs), err)
	}
	return hs[0]
}

func TestTwoWrapsOfTheSameDEKDiffer(t *testing.T) {
	h := newHSM(t)
	for _, mech := range []string{pkcs11.MechanismGCM, pkcs11.MechanismKWP} {
		t.Run(mech, func(t *testing.T) {
			cfg := h.config("differ-" + mech)
			cfg.Mechanism = mech
			p := create(t, cfg)
			dek := newDEK(t)
			seen := map[string]bool{}
			ivs := map[string]bool{}
			for range 50 {
				s := mustWrap(t, p, dek)
				if seen[string(s.Data)] {
					t.Fatal("two wraps of the same DEK are identical")
				}
				seen[string(s.Data)] = true
				if mech == pkcs11.MechanismGCM {
					if len(s.Data) != 60 || s.Algorithm != core.AlgAES256GCM {
						t.Fatalf("GCM wrap: %d bytes, algorithm %v", len(s.Data), s.Algorithm)
					}
					// SoftHSM given no IV uses a fixed one: the provider must
					// pass a fresh IV each time and store it.
					if ivs[string(s.Data[:12])] {
						t.Fatal("IV reused")
					}
					ivs[string(s.Data[:12])] = true
				} else if len(s.Data) != 88 || s.Algorithm != core.AlgAES256KWP {
					t.Fatalf("KWP wrap: %d bytes, algorithm %v", len(s.Data), s.Algorithm)
				}
				mustUnwrap(t, p, s, dek)
			}
		})
	}
}

// TestGCMWrapFormat recomputes a wrap with crypto/cipher from the documented
// format (docs/pkcs11.md), using an extractable key made by pkcs11-tool.
func TestGCMWrapFormat(t *testing.T) {
	h := newHSM(t)
	h.Keygen(t, h.token, softhsmtest.UserPIN, "format", softhsmtest.KeyOptions{ID: "0a0b", Extractable: true})
	p := open(t, h.config("format"))
	c, sh := raw(t, h)
	attrs, err := c.GetAttributeValue(sh, findKey(t, c, sh, "format", []byte{0x0a, 0x0b}), []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
	if err != nil {
		t.Fatalf("read the extractable test key: %v", err)
	}
	gcm, err := aes.NewCipher(attrs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(gcm)
	if err != nil {
		t.Fatal(err)
	}
	dek := newDEK(t)
	s := mustWrap(t, p, dek)
	if s.KeyID != h.token+"/format" || s.KeyVersion != "0a0b" {
		t.Fatalf("stanza key id %q version %q", s.KeyID, s.KeyVersion)
	}
	lp := func(dst []byte, b string) []byte {
		return append(binary.BigEndian.AppendUint32(dst, uint32(len(b))), b...)
	}
	ad := lp(lp(lp(lp(nil, pkcs11.GCMDomain), s.KeyID), s.KeyVersion), string(ec.Canonical()))
	got, err := aead.Open(nil, s.Data[:12], s.Data[12:], ad)
	if err != nil {
		t.Fatalf("documented format does not open the wrap: %v", err)
	}
	if !bytes.Equal(got, dek) {
		t.Fatal("documented format gives another DEK")
	}
	// And the provider opens a wrap made by crypto/cipher.
	iv := bytes.Repeat([]byte{7}, 12)
	data := append(iv, aead.Seal(nil, iv, dek, ad)...)
	mustUnwrap(t, p, core.Stanza{Provider: pkcs11.Type, KeyID: s.KeyID, KeyVersion: "0a0b", Algorithm: core.AlgAES256GCM, Data: data}, dek)
}

func TestKeyFromPkcs11Tool(t *testing.T) {
	h := newHSM(t)
	h.Keygen(t, h.token, softhsmtest.UserPIN, "opensc-kek", softhsmtest.KeyOptions{ID: "01"})
	for _, mech := range []string{pkcs11.MechanismGCM, pkcs11.MechanismKWP} {
		t.Run(mech, func(t *testing.T) {
			cfg := h.config("opensc-kek")
			cfg.Mechanism = mech
			p := open(t, cfg)
			if got := p.Ref().KeyID; got != h.token+"/opensc-kek" {
				t.Fatalf("key id %q", got)
			}
			v, err := p.CurrentVersion(context.Background())
			if err != nil || v != "01" {
				t.Fatalf("CurrentVersion = %q, %v; want 01", v, err)
			}
			dek := newDEK(t)
			mustUnwrap(t, p, mustWrap(t, p, dek), dek)
		})
	}
}

func TestSameLabelVersions(t *testing.T) {
	h := newHSM(t)
	h.Keygen(t, h.token, softhsmtest.UserPIN, "multi", softhsmtest.KeyOptions{ID: "01"})
	h.Keygen(t, h.token, softhsmtest.UserPIN, "multi", softhsmtest.KeyOptions{ID: "0002"})
	p := open(t, h.config("multi"))
	ctx := context.Background()
	if v, _ := p.CurrentVersion(ctx); v != "0002" {
		t.Fatalf("current version %q, want 0002 (the largest CKA_ID)", v)
	}
	dek := newDEK(t)
	s := mustWrap(t, p, dek)
	if s.KeyVersion != "0002" {
		t.Fatalf("wrapped under %q", s.KeyVersion)
	}
	// A stanza naming version 01 opens with key 01 only.
	s01 := s
	s01.KeyVersion = "01"
	if _, err := p.UnwrapKey(ctx, s01, ec); !errors.Is(err, core.ErrUnwrapFailed) {
		t.Fatalf("wrap of 0002 relabelled 01: %v, want ErrUnwrapFailed", err)
	}
	v, err := p.RotateKey(ctx)
	if err != nil || v != "0003" {
		t.Fatalf("RotateKey = %q, %v; want 0003", v, err)
	}
	mustUnwrap(t, p, s, dek)
}

func TestAmbiguousLabel(t *testing.T) {
	h := newHSM(t)
	for name, ids := range map[string][2]string{
		"same-id":    {"01", "01"},
		"no-id":      {"", ""},
		"same-value": {"01", "0001"},
	} {
		t.Run(name, func(t *testing.T) {
			label := "twin-" + name
			for _, id := range ids {
				h.Keygen(t, h.token, softhsmtest.UserPIN, label, softhsmtest.KeyOptions{ID: id})
			}
			p, err := pkcs11.New(context.Background(), h.config(label))
			if err == nil {
				p.Close()
			}
			checkErr(t, err, pkcs11.ErrAmbiguousKey, h.token, label)
			if !errors.Is(err, core.ErrFailedPrecondition) {
				t.Fatalf("ambiguous-key error does not wrap ErrFailedPrecondition: %v", err)
			}
		})
	}
	// An older version shared by two keys: the current one works, unwrap of
	// the shared version refuses rather than guesses.
	h.Keygen(t, h.token, softhsmtest.UserPIN, "old-twins", softhsmtest.KeyOptions{ID: "01"})
	h.Keygen(t, h.token, softhsmtest.UserPIN, "old-twins", softhsmtest.KeyOptions{ID: "01"})
	h.Keygen(t, h.token, softhsmtest.UserPIN, "old-twins", softhsmtest.KeyOptions{ID: "02"})
	p := open(t, h.config("old-twins"))
	s := mustWrap(t, p, newDEK(t))
	s.KeyVersion = "01"
	_, err := p.UnwrapKey(context.Background(), s, ec)
	checkErr(t, err, pkcs11.ErrAmbiguousKey, h.token, "old-twins")
}

func TestOpenErrors(t *testing.T) {
	h := newHSM(t)
	ctx := context.Background()
	// Close the creating provider: PKCS#11 logins are per process, so while
	// it is open a second provider would not have its PIN checked.
	if err := create(t, h.config("exists")).Close(); err != nil {
		t.Fatal(err)
	}
	mustFail := func(t *testing.T, cfg pkcs11.Config) error {
		t.Helper()
		p, err := pkcs11.New(ctx, cfg)
		if err == nil {
			p.Close()
		}
		return err
	}

	t.Run("wrong PIN", func(t *testing.T) {
		cfg := h.config("exists")
		cfg.PIN = []byte("wrong-pin-9876")
		err := mustFail(t, cfg)
		checkErr(t, err, core.ErrPermission, h.token, "exists", "wrong user PIN")
	})
	t.Run("missing token", func(t *testing.T) {
		cfg := h.config("exists")
		cfg.TokenLabel = "no-such-token"
		err := mustFail(t, cfg)
		checkErr(t, err, core.ErrKeyNotFound, "no-such-token", "exists", h.token)
	})
	t.Run("missing serial", func(t *testing.T) {
		cfg := h.config("exists")
		cfg.TokenLabel, cfg.TokenSerial = "", "0000000000000000"
		err := mustFail(t, cfg)
		checkErr(t, err, core.ErrKeyNotFound, "serial")
	})
	t.Run("missing key", func(t *testing.T) {
		err := mustFail(t, h.config("no-such-key"))
		checkErr(t, err, core.ErrKeyNotFound, h.token, "no-such-key")
	})
	t.Run("missing module", func(t *testing.T) {
		cfg := h.config("exists")
		cfg.Module = filepath.Join(t.TempDir(), "nope.so")
		err := mustFail(t, cfg)
		checkErr(t, err, core.ErrUnavailable, "nope.so")
	})
	t.Run("no PIN", func(t *testing.T) {
		cfg := h.config("exists")
		cfg.PIN = nil
		err := mustFail(t, cfg)
		checkErr(t, err, core.ErrMalformed, h.token)
	})
	t.Run("unsupported mechanism", func(t *testing.T) {
		// SoftHSM 2.6.1 does not implement CKM_AES_KEY_WRAP_KWP.
		defer pkcs11.SetTestMechanism(0x210B)() // CKM_AES_KEY_WRAP_KWP (PKCS#11 3.0)
		err := mustFail(t, h.config("exists"))
		checkErr(t, err, core.ErrUnsupported, h.token, "exists", "does not support")
	})
	t.Run("not an AES-256 key", func(t *testing.T) {
		h.Keygen(t, h.token, softhsmtest.UserPIN, "aes128", softhsmtest.KeyOptions{ID: "01", Bytes: 16})
		err := mustFail(t, h.config("aes128"))
		checkErr(t, err, core.ErrUnsupported, h.token, "aes128", "AES-256")
		h.Keygen(t, h.token, softhsmtest.UserPIN, "generic", softhsmtest.KeyOptions{ID: "01", KeyType: "GENERIC:32"})
		err = mustFail(t, h.config("generic"))
		checkErr(t, err, core.ErrUnsupported, h.token, "generic", "AES-256")
	})
	t.Run("create over an existing key", func(t *testing.T) {
		p, err := pkcs11.CreateKey(ctx, h.config("exists"))
		if err == nil {
			p.Close()
		}
		checkErr(t, err, core.ErrFailedPrecondition, h.token, "exists")
	})
	t.Run("cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if p, err := pkcs11.New(cctx, h.config("exists")); !errors.Is(err, context.Canceled) {
			if p != nil {
				p.Close()
			}
			t.Fatalf("New with a cancelled context: %v", err)
		}
	})
}

// TestErrorMapping covers return values SoftHSM cannot be made to produce
// (it never locks a PIN) and the CKR_GENERAL_ERROR rule.
func TestErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		ckr       uint
		unwrap    bool
		sentinel  error
		substring string
	}{
		{p11.CKR_PIN_LOCKED, false, core.ErrPermission, "locked"},
		{p11.CKR_PIN_INCORRECT, false, core.ErrPermission, "wrong user PIN"},
		{p11.CKR_PIN_EXPIRED, false, core.ErrPermission, "expired"},
		{p11.CKR_USER_PIN_NOT_INITIALIZED, false, core.ErrPermission, "never set"},
		{p11.CKR_MECHANISM_INVALID, false, core.ErrUnsupported, "does not support"},
		{p11.CKR_KEY_FUNCTION_NOT_PERMITTED, false, core.ErrPermission, "CKA_ENCRYPT"},
		{p11.CKR_KEY_HANDLE_INVALID, true, core.ErrKeyNotFound, "gone"},
		{p11.CKR_GENERAL_ERROR, true, core.ErrUnwrapFailed, "op"},
		{p11.CKR_ENCRYPTED_DATA_INVALID, true, core.ErrUnwrapFailed, "op"},
		{p11.CKR_WRAPPED_KEY_INVALID, true, core.ErrUnwrapFailed, "op"},
		{p11.CKR_GENERAL_ERROR, false, core.ErrUnavailable, "CKR_GENERAL_ERROR"},
		{p11.CKR_DEVICE_REMOVED, false, core.ErrUnavailable, "CKR_DEVICE_REMOVED"},
		{p11.CKR_SESSION_COUNT, false, core.ErrUnavailable, "sessions"},
		{p11.CKR_TOKEN_WRITE_PROTECTED, false, core.ErrPermission, "write-protected"},
	} {
		t.Run(fmt.Sprintf("0x%x/%v", tc.ckr, tc.unwrap), func(t *testing.T) {
			err := pkcs11.MapCode("tok", "kek", tc.ckr, tc.unwrap)
			checkErr(t, err, tc.sentinel, `"tok"`, `"kek"`, tc.substring)
			if tc.unwrap && errors.Is(tc.sentinel, core.ErrUnwrapFailed) && strings.Contains(err.Error(), "CKR_") {
				t.Errorf("unwrap failure reveals the token's return value: %q", err)
			}
		})
	}
}

func TestTokenBySerialAndSlot(t *testing.T) {
	h := newHSM(t)
	create(t, h.config("sel"))
	dek := newDEK(t)
	cfg := h.config("sel")
	cfg.TokenLabel, cfg.TokenSerial = "", h.serial
	bySerial := open(t, cfg)
	s := mustWrap(t, bySerial, dek)

	c, sh := raw(t, h)
	info, err := c.GetSessionInfo(sh)
	if err != nil {
		t.Fatal(err)
	}
	cfg = h.config("sel")
	slot := info.SlotID
	cfg.TokenLabel, cfg.Slot = "", &slot
	bySlot := open(t, cfg)
	if bySlot.Ref() != bySerial.Ref() {
		t.Fatalf("refs differ: %v, %v", bySlot.Ref(), bySerial.Ref())
	}
	mustUnwrap(t, bySlot, s, dek)
}

// TestRotation checks the attributes of a new version, that older versions
// keep unwrapping, and that a keyring rewrap moves a wrap to the new version.
func TestRotation(t *testing.T) {
	h := newHSM(t)
	p := create(t, h.config("rot"))
	ctx := context.Background()
	dek := newDEK(t)
	v1 := mustWrap(t, p, dek)
	if v1.KeyVersion != "00000001" {
		t.Fatalf("first version %q", v1.KeyVersion)
	}
	v, err := p.RotateKey(ctx)
	if err != nil || v != "00000002" {
		t.Fatalf("RotateKey = %q, %v", v, err)
	}
	mustUnwrap(t, p, v1, dek)

	c, sh := raw(t, h)
	id, _ := hex.DecodeString(v)
	attrs, err := c.GetAttributeValue(sh, findKey(t, c, sh, "rot", id), []*p11.Attribute{
		p11.NewAttribute(p11.CKA_TOKEN, nil), p11.NewAttribute(p11.CKA_SENSITIVE, nil),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, nil), p11.NewAttribute(p11.CKA_KEY_TYPE, nil),
		p11.NewAttribute(p11.CKA_VALUE_LEN, nil), p11.NewAttribute(p11.CKA_PRIVATE, nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{1, 1, 0}
	for i, a := range attrs[:3] {
		if len(a.Value) != 1 || a.Value[0] != want[i] {
			t.Errorf("attribute 0x%x = %v, want %d", a.Type, a.Value, want[i])
		}
	}
	if kt := binary.NativeEndian.Uint64(attrs[3].Value); kt != p11.CKK_AES {
		t.Errorf("key type 0x%x", kt)
	}
	if n := binary.NativeEndian.Uint64(attrs[4].Value); n != 32 {
		t.Errorf("value length %d", n)
	}
	if _, err := c.GetAttributeValue(sh, findKey(t, c, sh, "rot", id), []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)}); err == nil {
		t.Error("the new version's value can be read")
	}

	ring, err := core.NewKeyring(p)
	if err != nil {
		t.Fatal(err)
	}
	rw, err := ring.NewRewrapper(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out, st, err := rw.Rewrap(ctx, &core.WrappedKey{Stanzas: []core.Stanza{v1}}, ec)
	if err != nil || st != core.Rewrapped || out.Stanzas[0].KeyVersion != v {
		t.Fatalf("Rewrap: %v %v", st, err)
	}
	mustUnwrap(t, p, out.Stanzas[0], dek)

	// A second provider (another process, say) sees the rotation.
	other := open(t, h.config("rot"))
	if cur, err := other.CurrentVersion(ctx); err != nil || cur != v {
		t.Fatalf("other provider's CurrentVersion = %q, %v", cur, err)
	}

	// Destroy version 1 behind the provider's back: unwrap now says the
	// version is gone.
	if err := c.DestroyObject(sh, findKey(t, c, sh, "rot", []byte{0, 0, 0, 1})); err != nil {
		t.Fatal(err)
	}
	_, err = p.UnwrapKey(ctx, v1, ec)
	checkErr(t, err, core.ErrKeyNotFound, h.token, "rot")
}

// TestRecoversFromClosedSessions closes every session of the application on
// the token (which also logs it out); the provider logs in again.
func TestRecoversFromClosedSessions(t *testing.T) {
	h := newHSM(t)
	cfg := h.config("recover")
	cfg.Sessions = 3
	p := create(t, cfg)
	dek := newDEK(t)
	s := mustWrap(t, p, dek)
	c, sh := raw(t, h)
	info, err := c.GetSessionInfo(sh)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := c.CloseAllSessions(info.SlotID); err != nil {
			t.Fatal(err)
		}
		mustUnwrap(t, p, s, dek)
		s = mustWrap(t, p, dek)
		if err := p.Health(context.Background()); err != nil {
			t.Fatalf("Health after recovery: %v", err)
		}
	}
}

// TestSessionPool runs many callers through small pools: each session runs
// one operation at a time (no CKR_OPERATION_ACTIVE).
func TestSessionPool(t *testing.T) {
	h := newHSM(t)
	for _, n := range []int{1, 2, 8} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			cfg := h.config(fmt.Sprintf("pool-%d", n))
			cfg.Sessions = n
			for _, mech := range []string{pkcs11.MechanismGCM, pkcs11.MechanismKWP} {
				cfg.Mechanism = mech
				var p *pkcs11.Provider
				if mech == pkcs11.MechanismGCM {
					p = create(t, cfg)
				} else {
					p = open(t, cfg)
				}
				var wg sync.WaitGroup
				errs := make(chan error, 16)
				for range 16 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range 20 {
							dek, _ := core.NewDEK()
							s, err := p.WrapKey(context.Background(), dek, ec)
							if err == nil {
								var got core.DEK
								got, err = p.UnwrapKey(context.Background(), s, ec)
								if err == nil && !got.Equal(dek) {
									err = errors.New("other DEK")
								}
							}
							if err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestModuleSharedAndClose opens two providers on one module: closing one
// leaves the other working, and a closed provider refuses calls.
func TestModuleSharedAndClose(t *testing.T) {
	h := newHSM(t)
	a := create(t, h.config("a"))
	b := create(t, h.config("b"))
	if n := pkcs11.OpenModules(); n != 1 {
		t.Fatalf("%d modules open for two providers on one library, want 1", n)
	}
	dek := newDEK(t)
	s := mustWrap(t, b, dek)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	mustUnwrap(t, b, s, dek)
	_, err := a.WrapKey(context.Background(), dek, ec)
	checkErr(t, err, core.ErrUnavailable, "closed")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := pkcs11.OpenModules(); n != 0 {
		t.Fatalf("%d modules open after the last provider closed, want 0 (finalised)", n)
	}
}

// TestMechanismsInterop: a provider configured for one mechanism opens the
// other's wraps (unwrap follows the stanza's algorithm).
func TestMechanismsInterop(t *testing.T) {
	h := newHSM(t)
	gcm := create(t, h.config("interop"))
	cfg := h.config("interop")
	cfg.Mechanism = pkcs11.MechanismKWP
	kwp := open(t, cfg)
	dek := newDEK(t)
	mustUnwrap(t, kwp, mustWrap(t, gcm, dek), dek)
	mustUnwrap(t, gcm, mustWrap(t, kwp, dek), dek)
}

// TestRewrapBetweenLocalFileAndSoftHSM moves a wrapped DEK from the local-file
// provider to SoftHSM and back by changing only which provider is primary.
func TestRewrapBetweenLocalFileAndSoftHSM(t *testing.T) {
	h := newHSM(t)
	hsmP := create(t, h.config("migrate"))
	lf, err := localfile.Create(filepath.Join(t.TempDir(), "kek.json"), localfile.CreateOptions{KeyID: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rewrap := func(primary, other core.KeyProvider, wk *core.WrappedKey) *core.WrappedKey {
		t.Helper()
		ring, err := core.NewKeyring(primary, other)
		if err != nil {
			t.Fatal(err)
		}
		rw, err := ring.NewRewrapper(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out, st, err := rw.Rewrap(ctx, wk, ec)
		if err != nil || st != core.Rewrapped {
			t.Fatalf("rewrap onto %v: %v, %v", primary.Ref(), st, err)
		}
		if out.Stanzas[0].Ref() != primary.Ref() {
			t.Fatalf("rewrapped record starts with %v", out.Stanzas[0].Ref())
		}
		// The record keeps the old provider's wrap too; keep only the new
		// one, as after dropping the old provider from the config.
		return &core.WrappedKey{Stanzas: out.Stanzas[:1]}
	}
	ring, _ := core.NewKeyring(lf)
	dek, wk, err := ring.GenerateDEK(ctx, ec)
	if err != nil {
		t.Fatal(err)
	}
	onHSM := rewrap(hsmP, lf, wk)
	mustUnwrap(t, hsmP, onHSM.Stanzas[0], dek)
	back := rewrap(lf, hsmP, onHSM)
	mustUnwrap(t, lf, back.Stanzas[0], dek)
}

func TestIDOrder(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"01", "02", -1}, {"0002", "01", 1}, {"01", "0001", 0}, {"", "00", 0}, {"ff", "0100", -1},
	} {
		a, _ := hex.DecodeString(tc.a)
		b, _ := hex.DecodeString(tc.b)
		got := pkcs11.CompareID(a, b)
		if (got < 0) != (tc.want < 0) || (got > 0) != (tc.want > 0) {
			t.Errorf("compareID(%s, %s) = %d, want sign %d", tc.a, tc.b, got, tc.want)
		}
	}
	for in, want := range map[string]string{"": "01", "01": "02", "00ff": "0100", "ffff": "010000"} {
		b, _ := hex.DecodeString(in)
		if got := hex.EncodeToString(pkcs11.NextID(b)); got != want {
			t.Errorf("nextID(%q) = %q, want %q", in, got, want)
		}
	}
}
