package plugin

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// AttrType is the type of a provider configuration attribute.
type AttrType int

// Attribute types. They match the protocol's Attribute.Type.
const (
	String AttrType = iota + 1
	Number
	Bool
	StringList
	// Path is a string naming a file; the host resolves a relative path
	// against the directory of the configuration file.
	Path
	// Duration is a string such as "30s" or "5m" (time.ParseDuration).
	Duration
)

// String names the type as the configuration documentation does.
func (t AttrType) String() string {
	switch t {
	case String:
		return "string"
	case Number:
		return "number"
	case Bool:
		return "bool"
	case StringList:
		return "list(string)"
	case Path:
		return "path"
	case Duration:
		return "duration"
	}
	return fmt.Sprintf("type(%d)", int(t))
}

// Attribute describes one attribute of a provider block.
type Attribute struct {
	Name     string
	Type     AttrType
	Required bool
	// Secret marks a value (a PIN, a passphrase) that may only come from
	// the environment: `name = env("VAR")`, or `name_env = "VAR"`. The host
	// refuses a literal value, never prints it, and hands it to the
	// provider only in Configure.
	Secret      bool
	Description string
}

// Schema lists the attributes a provider type accepts in its block of
// keyctl.hcl. The host checks a block against it before the provider is
// configured, so a typo is reported with its file:line.
type Schema struct {
	Attributes []Attribute
}

// Attr returns the attribute named name.
func (s Schema) Attr(name string) (Attribute, bool) {
	i := slices.IndexFunc(s.Attributes, func(a Attribute) bool { return a.Name == name })
	if i < 0 {
		return Attribute{}, false
	}
	return s.Attributes[i], true
}

// Reserved attribute names that the host handles itself in every provider
// block; a provider schema may not use them.
var Reserved = []string{"plugin", "sha256"}

// Validate checks the schema itself: unique names, known types, no reserved
// name, no attribute ending in "_env" that shadows a secret's shorthand.
func (s Schema) Validate() error {
	seen := map[string]bool{}
	for _, a := range s.Attributes {
		if a.Name == "" || seen[a.Name] || slices.Contains(Reserved, a.Name) {
			return fmt.Errorf("schema: attribute %q is empty, repeated or reserved", a.Name)
		}
		if a.Type < String || a.Type > Duration {
			return fmt.Errorf("schema: attribute %q has an unknown type", a.Name)
		}
		if a.Secret && a.Type != String {
			return fmt.Errorf("schema: secret attribute %q must be a string", a.Name)
		}
		seen[a.Name] = true
	}
	for _, a := range s.Attributes {
		if a.Secret && seen[a.Name+"_env"] {
			return fmt.Errorf("schema: attribute %q clashes with the shorthand of secret %q", a.Name+"_env", a.Name)
		}
	}
	return nil
}

// Value is the value of one attribute, of the attribute's type. Exactly
// one field is meaningful.
type Value struct {
	Str    string
	Num    float64
	Bool   bool
	List   []string
	Secret []byte
}

// Format prints a Value with any secret redacted, for every fmt verb, so
// that a Value (or Values) that reaches a log line does not reveal a PIN or
// a passphrase.
func (x Value) Format(f fmt.State, _ rune) {
	switch {
	case x.Secret != nil:
		_, _ = io.WriteString(f, "<redacted>")
	case x.List != nil:
		fmt.Fprintf(f, "%q", x.List)
	case x.Str != "":
		fmt.Fprintf(f, "%q", x.Str)
	case x.Bool:
		_, _ = io.WriteString(f, "true")
	default:
		fmt.Fprintf(f, "%v", x.Num)
	}
}

// Values are the decoded attributes of a provider block, by name. Absent
// optional attributes are missing from the map.
type Values map[string]Value

// String returns a String or Path attribute, or "" when absent.
func (v Values) String(name string) string { return v[name].Str }

// Bool returns a Bool attribute, or false when absent.
func (v Values) Bool(name string) bool { return v[name].Bool }

// Number returns a Number attribute, or 0 when absent.
func (v Values) Number(name string) float64 { return v[name].Num }

// List returns a StringList attribute, or nil when absent.
func (v Values) List(name string) []string { return v[name].List }

// Duration returns a Duration attribute, or 0 when absent. The host has
// already checked that it parses.
func (v Values) Duration(name string) time.Duration {
	d, _ := time.ParseDuration(v[name].Str)
	return d
}

// Secret returns a secret attribute and whether it was given. The caller
// must not keep or log it; [Values.Zero] clears every secret.
func (v Values) Secret(name string) ([]byte, bool) {
	x, ok := v[name]
	return x.Secret, ok && x.Secret != nil
}

// Has reports whether the attribute was given.
func (v Values) Has(name string) bool {
	_, ok := v[name]
	return ok
}

// Zero overwrites every secret value.
func (v Values) Zero() {
	for _, x := range v {
		clear(x.Secret)
	}
}

// NeedSecretError is returned (wrapped) by a provider's Open when it needs a
// secret attribute that the configuration did not give, such as the
// passphrase of a protected key file. The host then obtains it from a
// terminal prompt and configures the provider again, or fails naming the
// environment variable to set.
type NeedSecretError struct {
	// Attribute is the secret attribute's name ("passphrase", "pin").
	Attribute string
	// For names what the secret opens, for a prompt: "key file
	// /x/kek.json".
	For string
	// What says why it is needed, for messages: "key file /x/kek.json is
	// passphrase-protected".
	What string
}

func (e *NeedSecretError) Error() string {
	return fmt.Sprintf("%s: secret %q not given", e.What, e.Attribute)
}

// AsNeedSecret reports whether err asks for a secret.
func AsNeedSecret(err error) (*NeedSecretError, bool) {
	var ns *NeedSecretError
	ok := errors.As(err, &ns)
	return ns, ok
}
