//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/keyctl/keyctl/core"
)

// Available reports whether this build has the PKCS#11 provider (it needs
// cgo). It is true in this build.
const Available = true

const (
	gcmIVSize   = 12
	gcmTagBits  = 128
	gcmDataSize = gcmIVSize + core.DEKSize + gcmTagBits/8 // 60

	kwpSaltSize  = 16
	kwpCheckSize = sha256.Size
	kwpPlainSize = core.DEKSize + kwpSaltSize + kwpCheckSize // 80
	kwpDataSize  = kwpPlainSize + 8                          // 88: RFC 5649 adds one semiblock

	// Domain strings of the associated data; see docs/pkcs11.md.
	gcmDomain = "keyctl-pkcs11/1 aes-gcm"
	kwpDomain = "keyctl-pkcs11/1 aes-kwp"

	keySize = 32

	// firstIDLen is the CKA_ID length of a first key made by CreateKey.
	firstIDLen      = 4
	maxKeysPerLabel = 4096
)

// ErrAmbiguousKey reports that the token holds several keys with the KEK's
// label that keyctl cannot tell apart (the same CKA_ID, or CKA_IDs of the
// same numeric value). It wraps core.ErrFailedPrecondition: give each key a
// distinct CKA_ID, or remove the extra one.
var ErrAmbiguousKey = fmt.Errorf("several keys with the same label and CKA_ID: %w", core.ErrFailedPrecondition)

// pin holds the user PIN; every fmt verb prints it redacted.
type pin string

func (pin) String() string             { return "PIN(REDACTED)" }
func (pin) GoString() string           { return "PIN(REDACTED)" }
func (pin) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte("PIN(REDACTED)")) }
func (p pin) MarshalText() ([]byte, error) {
	return nil, errors.New("pkcs11: refusing to marshal a PIN")
}

// Provider is a KEK held on a PKCS#11 token. It implements
// [core.KeyProvider], [core.KeyRotator], [core.VaultRewrapper],
// [core.DataKeyGenerator] and [core.HealthChecker], and is safe for
// concurrent use. Close it when done.
type Provider struct {
	cfg      Config // PIN cleared
	pin      pin
	mod      *module
	ref      core.KeyRef
	token    string // the token's label, for messages
	alg      core.Algorithm
	adPrefix map[core.Algorithm][]byte // domain and key id, length-prefixed

	mu   sync.Mutex // serialises recovery and key reloads
	slot uint       // guarded by mu
	gen  atomic.Uint64
	keys atomic.Pointer[keySet]

	rotMu sync.Mutex // serialises RotateKey within the process

	pool      chan *session // nil entries are sessions still to open
	size      int
	closed    atomic.Bool
	closeOnce sync.Once
	lifeMu    sync.Mutex     // orders enter against Close
	inflight  sync.WaitGroup // public calls in progress; Close waits for them
}

// enter registers a public call; it fails once Close has begun, so that
// Close can wait for the calls in flight before it releases the module.
func (p *Provider) enter() error {
	p.lifeMu.Lock()
	defer p.lifeMu.Unlock()
	if p.closed.Load() {
		return p.errorf(core.ErrUnavailable, "provider closed")
	}
	p.inflight.Add(1)
	return nil
}

// session is one open, logged-in session of generation gen.
type session struct {
	h   p11.SessionHandle
	gen uint64
}

// keyObj is one version of the KEK: a secret key object with the KEK's
// label.
type keyObj struct {
	id      []byte
	version string // hex of id
	h       p11.ObjectHandle
	aes256  bool // CKK_AES with CKA_VALUE_LEN 32
	keyType uint
	bits    int
	checked atomic.Int64 // time (UnixNano) checkHandle last confirmed h
}

// keySet is the provider's view of the KEK's versions on the token.
type keySet struct {
	all       []*keyObj // ascending CKA_ID
	current   *keyObj   // nil if ambiguous or none
	byVersion map[string]*keyObj
	dups      map[string]int // versions held by more than one object
	curErr    error          // why there is no current key
}

// New opens the token that cfg selects, logs in and finds the KEK's key
// objects by label. The current version (the one WrapKey uses) is the key
// whose CKA_ID is the largest as a big-endian number.
//
// Errors name the module, token and key label, never the PIN: core.ErrMalformed
// (invalid config, missing PIN), core.ErrUnavailable (module cannot be
// loaded or fails), core.ErrKeyNotFound (no such token, no key with the
// label), core.ErrPermission (wrong or locked PIN), core.ErrUnsupported
// (mechanism not supported by the token, key not AES-256),
// ErrAmbiguousKey (core.ErrFailedPrecondition).
func New(ctx context.Context, cfg Config) (*Provider, error) {
	return open(ctx, cfg, false)
}

// CreateKey opens the token like New and creates the KEK's first version
// (a token AES-256 key, sensitive and not extractable, CKA_ID 00000001) if
// no key with cfg.KeyLabel exists yet. With an existing key it fails with an
// error wrapping core.ErrFailedPrecondition.
func CreateKey(ctx context.Context, cfg Config) (*Provider, error) {
	return open(ctx, cfg, true)
}

func open(ctx context.Context, cfg Config, create bool) (*Provider, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(cfg.PIN) == 0 {
		return nil, fmt.Errorf("pkcs11: %s: no user PIN given (set it through the environment or a PIN file): %w", cfg.tokenDesc(), core.ErrMalformed)
	}
	p := &Provider{cfg: cfg, pin: pin(cfg.PIN)}
	p.cfg.PIN = nil
	if p.cfg.Mechanism == "" {
		p.cfg.Mechanism = MechanismGCM
	}
	p.alg = core.AlgAES256GCM
	if p.cfg.Mechanism == MechanismKWP {
		p.alg = core.AlgAES256KWP
	}
	p.size = cfg.Sessions
	if p.size == 0 {
		p.size = DefaultSessions
	}
	mod, err := openModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	p.mod = mod
	ok := false
	defer func() {
		if !ok {
			p.shutdown()
		}
	}()

	slot, label, err := p.findSlot()
	if err != nil {
		return nil, err
	}
	p.slot, p.token = slot, label
	p.ref = core.KeyRef{Provider: Type, KeyID: label + "/" + cfg.KeyLabel}
	p.adPrefix = map[core.Algorithm][]byte{
		core.AlgAES256GCM: lp(lp(nil, gcmDomain), p.ref.KeyID),
		core.AlgAES256KWP: lp(lp(nil, kwpDomain), p.ref.KeyID),
	}
	if err := p.checkMechanism(); err != nil {
		return nil, err
	}
	p.pool = make(chan *session, p.size)
	for range p.size {
		p.pool <- nil
	}
	// reloadKeys opens the first session and logs in.
	if err := p.reloadKeys(ctx); err != nil {
		return nil, err
	}
	ks := p.keys.Load()
	switch {
	case create && len(ks.byVersion) > 0:
		return nil, p.errorf(core.ErrFailedPrecondition, "create key: a key with this label already exists (version %s)", strings.Join(ks.versions(), ", "))
	case create:
		if _, err := p.generate(ctx, firstID()); err != nil {
			return nil, err
		}
	case ks.curErr != nil:
		return nil, ks.curErr
	}
	ok = true
	return p, nil
}

// lp appends b to dst preceded by its length as a 4-byte big-endian integer.
func lp[T string | []byte](dst []byte, b T) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(b)))
	return append(dst, b...)
}

// errorf returns an error naming the token and key label that wraps
// sentinel.
func (p *Provider) errorf(sentinel error, format string, a ...any) error {
	return fmt.Errorf("pkcs11: token %q, key %q: %s: %w", p.token, p.cfg.KeyLabel, fmt.Sprintf(format, a...), sentinel)
}

// Ref returns the provider type and the key id, "TOKEN-LABEL/KEY-LABEL".
func (p *Provider) Ref() core.KeyRef { return p.ref }

// Mechanism returns the mechanism name that WrapKey uses.
func (p *Provider) Mechanism() string { return p.cfg.Mechanism }

// String describes the provider without secrets.
func (p *Provider) String() string { return "pkcs11:" + p.ref.KeyID }

// Close closes the provider's sessions and releases the module (finalised
// when no other Provider of the process uses it). It waits for operations
// in flight. Calls after Close fail with core.ErrUnavailable.
func (p *Provider) Close() error {
	p.closeOnce.Do(func() {
		p.lifeMu.Lock()
		p.closed.Store(true)
		p.lifeMu.Unlock()
		p.inflight.Wait()
		p.shutdown()
	})
	return nil
}

// shutdown closes every session and releases the module.
func (p *Provider) shutdown() {
	if p.pool != nil {
		for range p.size {
			s := <-p.pool
			if s != nil {
				_ = p.mod.ctx.CloseSession(s.h)
			}
		}
	}
	if p.mod != nil {
		p.mod.release()
		p.mod = nil
	}
}

// findSlot finds the slot of the configured token.
func (p *Provider) findSlot() (uint, string, error) {
	c := p.mod.ctx
	slots, err := c.GetSlotList(true)
	if err != nil {
		return 0, "", fmt.Errorf("pkcs11: module %s: C_GetSlotList: %v: %w", p.cfg.Module, err, core.ErrUnavailable)
	}
	var found []uint
	var label string
	var seen []string
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err != nil {
			continue
		}
		seen = append(seen, fmt.Sprintf("%q (serial %s, slot %d)", ti.Label, ti.SerialNumber, s))
		match := false
		switch {
		case p.cfg.TokenLabel != "":
			match = ti.Label == p.cfg.TokenLabel
		case p.cfg.TokenSerial != "":
			match = ti.SerialNumber == p.cfg.TokenSerial
		case p.cfg.Slot != nil:
			match = s == *p.cfg.Slot
		}
		if match {
			if ti.Flags&p11.CKF_USER_PIN_LOCKED != 0 {
				return 0, "", fmt.Errorf("pkcs11: token %q, key %q: the user PIN is locked (too many wrong PINs); the security officer must reset it: %w", ti.Label, p.cfg.KeyLabel, core.ErrPermission)
			}
			if ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
				continue
			}
			found = append(found, s)
			label = ti.Label
		}
	}
	switch len(found) {
	case 1:
		return found[0], label, nil
	case 0:
		avail := "no initialised tokens"
		if len(seen) > 0 {
			avail = "tokens present: " + strings.Join(seen, ", ")
		}
		return 0, "", fmt.Errorf("pkcs11: %s, key %q: no such token in module %s (%s): %w", p.cfg.tokenDesc(), p.cfg.KeyLabel, p.cfg.Module, avail, core.ErrKeyNotFound)
	default:
		return 0, "", fmt.Errorf("pkcs11: %s, key %q: %d tokens match in module %s; select the token by serial instead: %w", p.cfg.tokenDesc(), p.cfg.KeyLabel, len(found), p.cfg.Module, core.ErrFailedPrecondition)
	}
}

// mechanismOf returns the PKCS#11 mechanism of an algorithm and the flags
// the token must offer for it.
func mechanismOf(a core.Algorithm) (mech uint, name string, flags uint) {
	if a == core.AlgAES256KWP {
		return p11.CKM_AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD", p11.CKF_WRAP | p11.CKF_UNWRAP
	}
	return p11.CKM_AES_GCM, "CKM_AES_GCM", p11.CKF_ENCRYPT | p11.CKF_DECRYPT
}

// testMechanism, if set by a test, replaces the wrapping mechanism checked
// at New.
var testMechanism uint

// checkMechanism refuses a token that does not offer the configured
// mechanism.
func (p *Provider) checkMechanism() error {
	mech, name, flags := mechanismOf(p.alg)
	if testMechanism != 0 {
		mech, name = testMechanism, fmt.Sprintf("mechanism 0x%x", testMechanism)
	}
	mi, err := p.mod.ctx.GetMechanismInfo(p.slot, []*p11.Mechanism{p11.NewMechanism(mech, nil)})
	if err != nil {
		if isCode(err, p11.CKR_MECHANISM_INVALID) {
			return p.errorf(core.ErrUnsupported, "the token does not support %s (mechanism %q)", name, p.cfg.Mechanism)
		}
		return p.errorf(core.ErrUnavailable, "C_GetMechanismInfo(%s): %v", name, err)
	}
	if mi.Flags&flags != flags {
		return p.errorf(core.ErrUnsupported, "the token offers %s without the operations keyctl needs (flags 0x%x, need 0x%x)", name, mi.Flags, flags)
	}
	if mi.MaxKeySize != 0 && mi.MaxKeySize < keySize && mi.MaxKeySize < keySize*8 {
		return p.errorf(core.ErrUnsupported, "the token's %s does not take 256-bit keys", name)
	}
	return nil
}

// openSession opens and logs in a session on the current slot.
func (p *Provider) openSession() (*session, error) {
	p.mu.Lock()
	slot := p.slot
	p.mu.Unlock()
	gen := p.gen.Load()
	c := p.mod.ctx
	h, err := c.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if isCode(err, p11.CKR_TOKEN_WRITE_PROTECTED) {
		// Wrap and unwrap work in read-only sessions; RotateKey and
		// DestroyVersion will then fail with the token's refusal.
		h, err = c.OpenSession(slot, p11.CKF_SERIAL_SESSION)
	}
	if err != nil {
		return nil, p.mapErr("open session", err, false)
	}
	if err := c.Login(h, p11.CKU_USER, string(p.pin)); err != nil && !isCode(err, p11.CKR_USER_ALREADY_LOGGED_IN) {
		_ = c.CloseSession(h)
		return nil, p.mapErr("log in", err, false)
	}
	return &session{h: h, gen: gen}, nil
}

// mapErr turns a PKCS#11 error into an error naming the token and key label
// and wrapping the matching core sentinel. unwrapping says whether err came
// from opening a wrap, where SoftHSM reports a bad tag, a wrong key and a
// failed integrity check alike as CKR_GENERAL_ERROR.
func (p *Provider) mapErr(op string, err error, unwrapping bool) error {
	if err == nil {
		return nil
	}
	c := code(err)
	if c == p11.CKR_OK { // not a PKCS#11 error: already mapped
		return err
	}
	var sentinel error
	why := ""
	switch c {
	case p11.CKR_PIN_INCORRECT:
		sentinel, why = core.ErrPermission, "wrong user PIN"
	case p11.CKR_PIN_LOCKED:
		sentinel, why = core.ErrPermission, "the user PIN is locked (too many wrong PINs); the security officer must reset it"
	case p11.CKR_PIN_EXPIRED:
		sentinel, why = core.ErrPermission, "the user PIN has expired"
	case p11.CKR_PIN_INVALID, p11.CKR_PIN_LEN_RANGE:
		sentinel, why = core.ErrPermission, "the user PIN is not valid for this token (wrong PIN)"
	case p11.CKR_USER_PIN_NOT_INITIALIZED:
		sentinel, why = core.ErrPermission, "the token's user PIN was never set (initialise the token with a user PIN)"
	case p11.CKR_USER_NOT_LOGGED_IN:
		sentinel, why = core.ErrPermission, "not logged in"
	case p11.CKR_KEY_FUNCTION_NOT_PERMITTED:
		sentinel, why = core.ErrPermission, "the key's attributes do not permit this operation (CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP or CKA_UNWRAP is false)"
	case p11.CKR_MECHANISM_INVALID, p11.CKR_MECHANISM_PARAM_INVALID, p11.CKR_FUNCTION_NOT_SUPPORTED:
		sentinel, why = core.ErrUnsupported, "the token does not support this mechanism"
	case p11.CKR_KEY_TYPE_INCONSISTENT, p11.CKR_KEY_SIZE_RANGE:
		sentinel, why = core.ErrUnsupported, "the key is not an AES-256 key usable with this mechanism"
	case p11.CKR_OBJECT_HANDLE_INVALID, p11.CKR_KEY_HANDLE_INVALID:
		sentinel, why = core.ErrKeyNotFound, "the key object is gone from the token"
	case p11.CKR_SESSION_COUNT:
		sentinel, why = core.ErrUnavailable, "the token refuses more sessions (lower the provider's sessions setting)"
	case p11.CKR_TOKEN_WRITE_PROTECTED, p11.CKR_SESSION_READ_ONLY:
		sentinel, why = core.ErrPermission, "the token is write-protected"
	case p11.CKR_GENERAL_ERROR, p11.CKR_ENCRYPTED_DATA_INVALID, p11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		p11.CKR_WRAPPED_KEY_INVALID, p11.CKR_WRAPPED_KEY_LEN_RANGE, p11.CKR_DATA_INVALID, p11.CKR_DATA_LEN_RANGE:
		if unwrapping {
			// Do not pass on the token's code: the error must not say
			// whether the tag, the key or the context was wrong.
			return p.errorf(core.ErrUnwrapFailed, "%s", op)
		}
		sentinel, why = core.ErrUnavailable, "the token failed"
	default:
		sentinel, why = core.ErrUnavailable, "the token failed"
	}
	return p.errorf(sentinel, "%s: %s (%s)", op, why, ckrName(c))
}

// ckrName names a PKCS#11 return value.
func ckrName(c uint) string {
	s := p11.Error(c).Error() // "pkcs11: 0xA0: CKR_PIN_INCORRECT"
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.HasPrefix(s[i+2:], "CKR_") {
		return s[i+2:]
	}
	return fmt.Sprintf("CKR 0x%x", c)
}

// sessionLost reports PKCS#11 errors after which the session (or the login,
// or the slot) is gone and the provider should open a new one.
func sessionLost(err error) bool {
	switch code(err) {
	case p11.CKR_SESSION_HANDLE_INVALID, p11.CKR_SESSION_CLOSED, p11.CKR_USER_NOT_LOGGED_IN,
		p11.CKR_TOKEN_NOT_PRESENT, p11.CKR_TOKEN_NOT_RECOGNIZED, p11.CKR_DEVICE_REMOVED,
		p11.CKR_SLOT_ID_INVALID, p11.CKR_OPERATION_ACTIVE:
		return true
	}
	return false
}

// handleLost reports errors after which cached object handles are stale.
func handleLost(err error) bool {
	switch code(err) {
	case p11.CKR_OBJECT_HANDLE_INVALID, p11.CKR_KEY_HANDLE_INVALID:
		return true
	}
	return false
}

// take returns a logged-in session of the current generation from the pool.
func (p *Provider) take(ctx context.Context) (*session, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if p.closed.Load() {
		return nil, p.errorf(core.ErrUnavailable, "provider closed")
	}
	var s *session
	select {
	case s = <-p.pool:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if s != nil && s.gen == p.gen.Load() {
		return s, nil
	}
	if s != nil {
		_ = p.mod.ctx.CloseSession(s.h)
	}
	s, err := p.openSession()
	if err != nil {
		p.pool <- nil
		return nil, err
	}
	return s, nil
}

// put returns s to the pool; a nil s leaves an empty place to open later.
func (p *Provider) put(s *session) { p.pool <- s }

// drop closes s and leaves an empty place in the pool.
func (p *Provider) drop(s *session) {
	_ = p.mod.ctx.CloseSession(s.h)
	p.pool <- nil
}

// do runs fn on a pooled session. When the session or the login was lost
// (a re-initialised token, a closed session) it finds the token again, logs
// in and retries once; when a key handle went stale it reloads the keys and
// retries once.
func (p *Provider) do(ctx context.Context, fn func(s *session) error) error {
	for attempt := 0; ; attempt++ {
		s, err := p.take(ctx)
		if err != nil {
			return err
		}
		err = fn(s)
		switch {
		case err == nil:
			p.put(s)
			return nil
		case sessionLost(err):
			p.drop(s)
			if attempt > 0 {
				return err
			}
			if rerr := p.recover(ctx, s.gen); rerr != nil {
				return rerr
			}
		case handleLost(err):
			p.put(s)
			if attempt > 0 {
				return err
			}
			if rerr := p.reloadKeys(ctx); rerr != nil {
				return rerr
			}
		default:
			p.put(s)
			return err
		}
	}
}

// recover starts a new session generation after sessions of generation gen
// were found dead: it finds the token's slot again (SoftHSM renumbers slots
// when a token is initialised), and reloads the keys with a new session.
func (p *Provider) recover(ctx context.Context, gen uint64) error {
	p.mu.Lock()
	if p.gen.Load() != gen {
		p.mu.Unlock()
		return nil // someone else already did
	}
	slot, label, err := p.findSlot()
	if err != nil {
		p.mu.Unlock()
		return err
	}
	if label != p.token {
		p.mu.Unlock()
		return p.errorf(core.ErrKeyNotFound, "the token was replaced by one labelled %q", label)
	}
	p.slot = slot
	p.gen.Add(1)
	p.mu.Unlock()
	return p.reloadKeys(ctx)
}

// reloadKeys reads the KEK's key objects from the token.
func (p *Provider) reloadKeys(ctx context.Context) error {
	s, err := p.take(ctx)
	if err != nil {
		return err
	}
	ks, err := p.findKeys(s)
	if err != nil {
		if sessionLost(err) {
			p.drop(s)
		} else {
			p.put(s)
		}
		return p.mapErr("find keys", err, false)
	}
	p.put(s)
	p.mu.Lock()
	p.keys.Store(ks)
	p.mu.Unlock()
	return nil
}

// ulong decodes a CK_ULONG attribute value.
func ulong(b []byte) uint {
	switch len(b) {
	case 8:
		return uint(binary.NativeEndian.Uint64(b))
	case 4:
		return uint(binary.NativeEndian.Uint32(b))
	}
	return 0
}

// findKeys lists the secret keys with the KEK's label.
func (p *Provider) findKeys(s *session) (*keySet, error) {
	c := p.mod.ctx
	tmpl := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_LABEL, p.cfg.KeyLabel),
	}
	if err := c.FindObjectsInit(s.h, tmpl); err != nil {
		return nil, err
	}
	var handles []p11.ObjectHandle
	for {
		hs, _, err := c.FindObjects(s.h, 64)
		if err != nil {
			_ = c.FindObjectsFinal(s.h)
			return nil, err
		}
		handles = append(handles, hs...)
		if len(hs) == 0 || len(handles) > maxKeysPerLabel {
			break
		}
	}
	if err := c.FindObjectsFinal(s.h); err != nil {
		return nil, err
	}
	ks := &keySet{byVersion: map[string]*keyObj{}, dups: map[string]int{}}
	var all []*keyObj
	for _, h := range handles {
		attrs, err := c.GetAttributeValue(s.h, h, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_ID, nil),
			p11.NewAttribute(p11.CKA_KEY_TYPE, nil),
			p11.NewAttribute(p11.CKA_VALUE_LEN, nil),
		})
		if err != nil {
			if handleLost(err) {
				continue // destroyed meanwhile
			}
			return nil, err
		}
		k := &keyObj{h: h}
		for _, a := range attrs {
			switch a.Type {
			case p11.CKA_ID:
				k.id = bytes.Clone(a.Value)
			case p11.CKA_KEY_TYPE:
				k.keyType = ulong(a.Value)
			case p11.CKA_VALUE_LEN:
				k.bits = int(ulong(a.Value)) * 8
			}
		}
		k.version = hex.EncodeToString(k.id)
		k.aes256 = k.keyType == p11.CKK_AES && k.bits == keySize*8
		if _, dup := ks.byVersion[k.version]; dup {
			ks.dups[k.version]++
		} else {
			ks.byVersion[k.version] = k
		}
		all = append(all, k)
	}
	if len(all) == 0 {
		ks.curErr = p.errorf(core.ErrKeyNotFound, "no secret key with this label on the token (create one: keyctl's pkcs11.CreateKey, or pkcs11-tool --keygen --key-type AES:32 --label %q --id 01)", p.cfg.KeyLabel)
		return ks, nil
	}
	slices.SortStableFunc(all, func(a, b *keyObj) int { return compareID(a.id, b.id) })
	ks.all = all
	cur := all[len(all)-1]
	ties := 0
	for _, k := range all {
		if compareID(k.id, cur.id) == 0 {
			ties++
		}
	}
	switch {
	case ties > 1:
		ks.curErr = p.errorf(ErrAmbiguousKey, "%d keys share this label and the highest CKA_ID %s, so keyctl cannot tell which is the current version; give each a distinct CKA_ID (pkcs11-tool --id) or delete the extra one", ties, idDesc(cur.id))
	case !cur.aes256:
		ks.curErr = p.errorf(core.ErrUnsupported, "the current version (CKA_ID %s) is not an AES-256 key (key type 0x%x, %d bits)", idDesc(cur.id), cur.keyType, cur.bits)
	default:
		ks.current = cur
	}
	return ks, nil
}

// idDesc renders a CKA_ID for messages.
func idDesc(id []byte) string {
	if len(id) == 0 {
		return "(empty)"
	}
	return hex.EncodeToString(id)
}

// compareID orders CKA_IDs as unsigned big-endian numbers.
func compareID(a, b []byte) int {
	a, b = bytes.TrimLeft(a, "\x00"), bytes.TrimLeft(b, "\x00")
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	return bytes.Compare(a, b)
}

// nextID returns the CKA_ID after id: id + 1 as a big-endian number of the
// same length, one byte longer on overflow.
func nextID(id []byte) []byte {
	out := bytes.Clone(id)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out
		}
	}
	return append([]byte{1}, out...)
}

func firstID() []byte {
	id := make([]byte, firstIDLen)
	id[firstIDLen-1] = 1
	return id
}

func (ks *keySet) versions() []string {
	var vs []string
	for v := range ks.byVersion {
		vs = append(vs, v)
	}
	slices.Sort(vs)
	return vs
}

// currentKey returns the key WrapKey uses.
func (p *Provider) currentKey() (*keyObj, error) {
	ks := p.keys.Load()
	if ks.current == nil {
		return nil, ks.curErr
	}
	return ks.current, nil
}

// versionKey returns the key of version v, reloading the keys once when v is
// unknown (another process may have rotated).
func (p *Provider) versionKey(ctx context.Context, v string) (*keyObj, error) {
	for reloaded := false; ; reloaded = true {
		ks := p.keys.Load()
		if n := ks.dups[v]; n > 0 {
			return nil, p.errorf(ErrAmbiguousKey, "%d keys share this label and CKA_ID %s; keyctl will not guess which one wrapped", n+1, v)
		}
		if k := ks.byVersion[v]; k != nil {
			if !k.aes256 {
				return nil, p.errorf(core.ErrUnsupported, "version %s is not an AES-256 key (key type 0x%x, %d bits)", v, k.keyType, k.bits)
			}
			return k, nil
		}
		if reloaded {
			return nil, p.errorf(core.ErrKeyNotFound, "no key version %q (CKA_ID) on the token", v)
		}
		if err := p.reloadKeys(ctx); err != nil {
			return nil, err
		}
	}
}

// CurrentVersion reads the KEK's keys from the token and returns the
// current version: the hex CKA_ID of the key with the largest CKA_ID.
func (p *Provider) CurrentVersion(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if err := p.enter(); err != nil {
		return "", err
	}
	defer p.inflight.Done()
	if err := p.reloadKeys(ctx); err != nil {
		return "", err
	}
	k, err := p.currentKey()
	if err != nil {
		return "", err
	}
	return k.version, nil
}

// ad returns the associated data of a wrap: the domain and key id, the
// version and the encryption context, each length-prefixed.
func (p *Provider) ad(alg core.Algorithm, version string, ec core.Context) []byte {
	pre := p.adPrefix[alg]
	canon := ec.Canonical()
	out := make([]byte, 0, len(pre)+8+len(version)+len(canon))
	out = append(out, pre...)
	out = lp(out, version)
	return lp(out, canon)
}

// WrapKey wraps dek under the current version with the configured
// mechanism.
func (p *Provider) WrapKey(ctx context.Context, dek core.DEK, ec core.Context) (core.Stanza, error) {
	if err := ctx.Err(); err != nil {
		return core.Stanza{}, err
	}
	if err := p.enter(); err != nil {
		return core.Stanza{}, err
	}
	defer p.inflight.Done()
	if err := dek.Validate(); err != nil {
		return core.Stanza{}, p.errorf(err, "wrap")
	}
	if err := ec.Validate(); err != nil {
		return core.Stanza{}, p.errorf(err, "wrap")
	}
	var st core.Stanza
	err := p.do(ctx, func(s *session) error {
		k, err := p.currentKey()
		if err != nil {
			return err
		}
		data, err := p.wrapWith(s, k, dek, ec)
		if err != nil {
			return err
		}
		st = core.Stanza{Provider: Type, KeyID: p.ref.KeyID, KeyVersion: k.version, Algorithm: p.alg, Data: data}
		return nil
	})
	if err != nil {
		return core.Stanza{}, p.mapErr("wrap with "+p.cfg.Mechanism, err, false)
	}
	return st, nil
}

func (p *Provider) wrapWith(s *session, k *keyObj, dek core.DEK, ec core.Context) ([]byte, error) {
	c := p.mod.ctx
	if err := p.checkHandle(s, k); err != nil {
		return nil, err
	}
	ad := p.ad(p.alg, k.version, ec)
	if p.alg == core.AlgAES256GCM {
		iv := make([]byte, gcmIVSize)
		if _, err := rand.Read(iv); err != nil {
			return nil, p.errorf(core.ErrUnavailable, "random IV: %v", err)
		}
		params := p11.NewGCMParams(iv, ad, gcmTagBits)
		defer params.Free()
		if err := c.EncryptInit(s.h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, k.h); err != nil {
			return nil, err
		}
		ct, err := c.Encrypt(s.h, dek)
		if err != nil {
			return nil, err
		}
		// Some modules write their own IV; store the one actually used.
		if used := params.IV(); len(used) == gcmIVSize {
			iv = used
		}
		if len(ct) != core.DEKSize+gcmTagBits/8 {
			return nil, p.errorf(core.ErrUnavailable, "wrap: the token returned %d bytes of AES-GCM output, want %d", len(ct), core.DEKSize+gcmTagBits/8)
		}
		return append(iv, ct...), nil
	}
	// AES key wrap with padding: the DEK, a random salt and a hash binding
	// the associated data and the salt become one generic secret session
	// object, which C_WrapKey wraps.
	plain := make([]byte, 0, kwpPlainSize)
	plain = append(plain, dek...)
	salt := make([]byte, kwpSaltSize)
	if _, err := rand.Read(salt); err != nil {
		return nil, p.errorf(core.ErrUnavailable, "random salt: %v", err)
	}
	plain = append(plain, salt...)
	plain = append(plain, kwpCheck(ad, salt)...)
	defer clear(plain)
	obj, err := c.CreateObject(s.h, kwpObjectTemplate(p11.NewAttribute(p11.CKA_VALUE, plain)))
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.DestroyObject(s.h, obj) }()
	out, err := c.WrapKey(s.h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_WRAP_PAD, nil)}, k.h, obj)
	if err != nil {
		return nil, err
	}
	if len(out) != kwpDataSize {
		return nil, p.errorf(core.ErrUnavailable, "wrap: the token returned %d bytes of key wrap output, want %d", len(out), kwpDataSize)
	}
	return out, nil
}

// handleCheckInterval is how long checkHandle trusts a confirmed handle.
const handleCheckInterval = time.Second

// checkHandle confirms, at most once per handleCheckInterval, that the
// cached handle k.h still names the key with the KEK's label and k's CKA_ID.
// A module may hand a destroyed object's handle to a new object; without
// this check a wrap could be made with another key and recorded under k's
// version, and so be lost. (Reading the attributes costs as much as a wrap
// on SoftHSM2, hence the interval.) A mismatch is reported as
// CKR_OBJECT_HANDLE_INVALID, which makes the caller reload the keys and
// retry.
func (p *Provider) checkHandle(s *session, k *keyObj) error {
	now := time.Now().UnixNano()
	if last := k.checked.Load(); last != 0 && now-last < int64(handleCheckInterval) && now >= last {
		return nil
	}
	attrs, err := p.mod.ctx.GetAttributeValue(s.h, k.h, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_ID, nil),
		p11.NewAttribute(p11.CKA_LABEL, nil),
	})
	if err != nil {
		return err
	}
	if len(attrs) != 2 || !bytes.Equal(attrs[0].Value, k.id) || string(attrs[1].Value) != p.cfg.KeyLabel {
		return p11.Error(p11.CKR_OBJECT_HANDLE_INVALID)
	}
	k.checked.Store(now)
	return nil
}

// kwpCheck is the hash that binds the associated data to a key-wrap wrap.
func kwpCheck(ad, salt []byte) []byte {
	h := sha256.New()
	h.Write(ad)
	h.Write(salt)
	return h.Sum(nil)
}

// UnwrapKey opens a stanza with the exact key version it names.
func (p *Provider) UnwrapKey(ctx context.Context, st core.Stanza, ec core.Context) (core.DEK, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.inflight.Done()
	if st.Provider != Type || st.KeyID != p.ref.KeyID {
		return nil, p.errorf(core.ErrNoProvider, "stanza is for %v, this provider is %v", st.Ref(), p.ref)
	}
	if err := ec.Validate(); err != nil {
		return nil, p.errorf(err, "unwrap")
	}
	var want int
	switch st.Algorithm {
	case core.AlgAES256GCM:
		want = gcmDataSize
	case core.AlgAES256KWP:
		want = kwpDataSize
	default:
		return nil, p.errorf(core.ErrUnknownAlgorithm, "unwrap: algorithm %v", st.Algorithm)
	}
	k, err := p.versionKey(ctx, st.KeyVersion)
	if err != nil {
		return nil, err
	}
	if len(st.Data) != want {
		return nil, p.errorf(core.ErrUnwrapFailed, "unwrap (version %s)", st.KeyVersion)
	}
	var dek core.DEK
	err = p.do(ctx, func(s *session) error {
		// After a recovery the handle may have changed.
		if k2 := p.keys.Load().byVersion[st.KeyVersion]; k2 != nil {
			k = k2
		}
		var err error
		dek, err = p.unwrapWith(s, k, st, ec)
		return err
	})
	if err != nil {
		return nil, p.mapErr(fmt.Sprintf("unwrap (version %s)", st.KeyVersion), err, true)
	}
	return dek, nil
}

func (p *Provider) unwrapWith(s *session, k *keyObj, st core.Stanza, ec core.Context) (core.DEK, error) {
	c := p.mod.ctx
	ad := p.ad(st.Algorithm, k.version, ec)
	if st.Algorithm == core.AlgAES256GCM {
		params := p11.NewGCMParams(bytes.Clone(st.Data[:gcmIVSize]), ad, gcmTagBits)
		defer params.Free()
		if err := c.DecryptInit(s.h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, k.h); err != nil {
			return nil, err
		}
		pt, err := c.Decrypt(s.h, st.Data[gcmIVSize:])
		if err != nil {
			return nil, err
		}
		if len(pt) != core.DEKSize {
			clear(pt)
			return nil, p.errorf(core.ErrUnwrapFailed, "unwrap (version %s)", k.version)
		}
		return core.DEK(pt), nil
	}
	obj, err := c.UnwrapKey(s.h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_WRAP_PAD, nil)}, k.h, st.Data, kwpObjectTemplate())
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.DestroyObject(s.h, obj) }()
	attrs, err := c.GetAttributeValue(s.h, obj, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
	if err != nil {
		return nil, err
	}
	plain := attrs[0].Value
	defer clear(plain)
	if len(plain) != kwpPlainSize {
		return nil, p.errorf(core.ErrUnwrapFailed, "unwrap (version %s)", k.version)
	}
	salt, check := plain[core.DEKSize:core.DEKSize+kwpSaltSize], plain[core.DEKSize+kwpSaltSize:]
	if subtle.ConstantTimeCompare(check, kwpCheck(ad, salt)) != 1 {
		return nil, p.errorf(core.ErrUnwrapFailed, "unwrap (version %s)", k.version)
	}
	return core.DEK(bytes.Clone(plain[:core.DEKSize])), nil
}

// RewrapKey opens src (a stanza of this provider) and wraps its DEK under
// the current version, inside the provider; the DEK is zeroed. A stanza of
// another Ref gives core.ErrNoProvider joined with core.ErrUnsupported.
func (p *Provider) RewrapKey(ctx context.Context, src core.Stanza, ec core.Context) (core.Stanza, error) {
	if err := ctx.Err(); err != nil {
		return core.Stanza{}, err
	}
	if src.Provider != Type || src.KeyID != p.ref.KeyID {
		return core.Stanza{}, p.errorf(errors.Join(core.ErrNoProvider, core.ErrUnsupported), "rewrap: stanza is for %v", src.Ref())
	}
	dek, err := p.UnwrapKey(ctx, src, ec)
	if err != nil {
		return core.Stanza{}, err
	}
	defer dek.Zero()
	return p.WrapKey(ctx, dek, ec)
}

// GenerateDataKey draws a DEK from the token's random generator
// (C_GenerateRandom) and wraps it under the current version.
func (p *Provider) GenerateDataKey(ctx context.Context, ec core.Context) (core.DEK, core.Stanza, error) {
	if err := ctx.Err(); err != nil {
		return nil, core.Stanza{}, err
	}
	if err := p.enter(); err != nil {
		return nil, core.Stanza{}, err
	}
	defer p.inflight.Done()
	if err := ec.Validate(); err != nil {
		return nil, core.Stanza{}, p.errorf(err, "generate data key")
	}
	var dek core.DEK
	err := p.do(ctx, func(s *session) error {
		b, err := p.mod.ctx.GenerateRandom(s.h, core.DEKSize)
		if err != nil {
			return err
		}
		if len(b) != core.DEKSize {
			return p.errorf(core.ErrUnavailable, "C_GenerateRandom returned %d bytes", len(b))
		}
		dek = core.DEK(b)
		return nil
	})
	if err != nil {
		return nil, core.Stanza{}, p.mapErr("generate data key", err, false)
	}
	st, err := p.WrapKey(ctx, dek, ec)
	if err != nil {
		dek.Zero()
		return nil, core.Stanza{}, err
	}
	return dek, st, nil
}

// RotateKey creates a new version: a token AES-256 key with the KEK's label,
// sensitive and not extractable, whose CKA_ID is the largest existing CKA_ID
// plus one. It becomes current; older versions keep unwrapping until their
// key objects are destroyed.
func (p *Provider) RotateKey(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if err := p.enter(); err != nil {
		return "", err
	}
	defer p.inflight.Done()
	p.rotMu.Lock()
	defer p.rotMu.Unlock()
	if err := p.reloadKeys(ctx); err != nil {
		return "", err
	}
	ks := p.keys.Load()
	var max []byte
	for _, k := range ks.byVersion {
		if max == nil || compareID(k.id, max) > 0 {
			max = k.id
		}
	}
	id := firstID()
	if max != nil {
		id = nextID(max)
	}
	return p.generate(ctx, id)
}

// generate creates the key with CKA_ID id, checks that no other key with
// the label took the same id meanwhile, and reloads the keys.
func (p *Provider) generate(ctx context.Context, id []byte) (string, error) {
	version := hex.EncodeToString(id)
	err := p.do(ctx, func(s *session) error {
		c := p.mod.ctx
		h, err := c.GenerateKey(s.h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
			p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
			p11.NewAttribute(p11.CKA_VALUE_LEN, keySize),
			p11.NewAttribute(p11.CKA_TOKEN, true),
			p11.NewAttribute(p11.CKA_PRIVATE, true),
			p11.NewAttribute(p11.CKA_SENSITIVE, true),
			p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
			p11.NewAttribute(p11.CKA_ENCRYPT, true),
			p11.NewAttribute(p11.CKA_DECRYPT, true),
			p11.NewAttribute(p11.CKA_WRAP, true),
			p11.NewAttribute(p11.CKA_UNWRAP, true),
			p11.NewAttribute(p11.CKA_SIGN, false),
			p11.NewAttribute(p11.CKA_VERIFY, false),
			p11.NewAttribute(p11.CKA_DERIVE, false),
			p11.NewAttribute(p11.CKA_LABEL, p.cfg.KeyLabel),
			p11.NewAttribute(p11.CKA_ID, id),
		})
		if err != nil {
			return err
		}
		ks, err := p.findKeys(s)
		if err != nil {
			return err
		}
		if ks.dups[version] > 0 {
			// Another process created the same version at the same time:
			// remove ours rather than leave two keys nobody can tell apart.
			_ = c.DestroyObject(s.h, h)
			return p.errorf(core.ErrUnavailable, "create key version %s: another key with the same CKA_ID appeared meanwhile (a concurrent rotation?); retry", version)
		}
		return nil
	})
	if err != nil {
		return "", p.mapErr("create key version "+version, err, false)
	}
	if err := p.reloadKeys(ctx); err != nil {
		return "", err
	}
	return version, nil
}

// ErrCurrentVersion reports an operation refused on the current KEK version
// (destroying it). Rotate first. It wraps core.ErrFailedPrecondition.
var ErrCurrentVersion = fmt.Errorf("refused on the current key version: %w", core.ErrFailedPrecondition)

// VersionInfo describes one KEK version: one key object with the KEK's label.
type VersionInfo struct {
	// Version is the hex CKA_ID, as written in stanzas.
	Version string
	// Current reports whether WrapKey uses this version.
	Current bool
	// Usable reports whether the key is an AES-256 key (other keys with the
	// label are listed but never used).
	Usable bool
	// Objects is the number of key objects with this label and CKA_ID; more
	// than one makes the version ambiguous (ErrAmbiguousKey).
	Objects int
}

// Location names where the versions live, for display: the token and the
// module.
func (p *Provider) Location() string {
	return fmt.Sprintf("token %q (module %s)", p.token, p.cfg.Module)
}

// Versions reads the KEK's key objects from the token and returns one entry
// per distinct CKA_ID, in ascending CKA_ID order (oldest first for versions
// made by RotateKey).
func (p *Provider) Versions(ctx context.Context) ([]VersionInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.inflight.Done()
	if err := p.reloadKeys(ctx); err != nil {
		return nil, err
	}
	ks := p.keys.Load()
	var out []VersionInfo
	for _, k := range ks.all {
		if len(out) > 0 && out[len(out)-1].Version == k.version {
			continue
		}
		out = append(out, VersionInfo{
			Version: k.version,
			Current: ks.current != nil && ks.current.version == k.version,
			Usable:  k.aes256,
			Objects: ks.dups[k.version] + 1,
		})
	}
	return out, nil
}

// DestroyVersion destroys the key object of an older version on the token
// (C_DestroyObject). Wraps under it can no longer be opened, by anyone:
// rewrap them first. It refuses the current version (ErrCurrentVersion), an
// unknown one (core.ErrKeyNotFound) and an ambiguous one (ErrAmbiguousKey).
func (p *Provider) DestroyVersion(ctx context.Context, version string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := p.enter(); err != nil {
		return err
	}
	defer p.inflight.Done()
	p.rotMu.Lock()
	defer p.rotMu.Unlock()
	if err := p.reloadKeys(ctx); err != nil {
		return err
	}
	ks := p.keys.Load()
	if n := ks.dups[version]; n > 0 {
		return p.errorf(ErrAmbiguousKey, "destroy version %s: %d keys share this label and CKA_ID; delete the right one with the token's own tools", version, n+1)
	}
	k := ks.byVersion[version]
	if k == nil {
		return p.errorf(core.ErrKeyNotFound, "destroy: no key version %q (CKA_ID) on the token", version)
	}
	if ks.current == nil || ks.current.version == version {
		return p.errorf(ErrCurrentVersion, "destroy version %s", version)
	}
	err := p.do(ctx, func(s *session) error { return p.mod.ctx.DestroyObject(s.h, k.h) })
	if err != nil {
		return p.mapErr("destroy version "+version, err, false)
	}
	return p.reloadKeys(ctx)
}

// Health checks that a logged-in session can be opened and that the current
// version's key object is still on the token.
func (p *Provider) Health(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := p.enter(); err != nil {
		return err
	}
	defer p.inflight.Done()
	err := p.do(ctx, func(s *session) error {
		info, err := p.mod.ctx.GetSessionInfo(s.h)
		if err != nil {
			return err
		}
		if info.State != p11.CKS_RW_USER_FUNCTIONS && info.State != p11.CKS_RO_USER_FUNCTIONS {
			return p11.Error(p11.CKR_USER_NOT_LOGGED_IN)
		}
		k, err := p.currentKey()
		if err != nil {
			return err
		}
		_, err = p.mod.ctx.GetAttributeValue(s.h, k.h, []*p11.Attribute{p11.NewAttribute(p11.CKA_ID, nil)})
		return err
	})
	return p.mapErr("health", err, false)
}

var (
	_ core.KeyProvider      = (*Provider)(nil)
	_ core.KeyRotator       = (*Provider)(nil)
	_ core.VaultRewrapper   = (*Provider)(nil)
	_ core.DataKeyGenerator = (*Provider)(nil)
	_ core.HealthChecker    = (*Provider)(nil)
)

// kwpObjectTemplate is the template of the short-lived session object that
// carries the padded DEK through C_WrapKey and C_UnwrapKey: a generic secret
// that exists only in this session and can be read back, plus extra.
func kwpObjectTemplate(extra ...*p11.Attribute) []*p11.Attribute {
	return append([]*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_GENERIC_SECRET),
		p11.NewAttribute(p11.CKA_TOKEN, false),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, false),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, true),
	}, extra...)
}
