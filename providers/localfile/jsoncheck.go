package localfile

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/keyctl/keyctl/core"
)

// encoding/json is lenient where a key file parser must not be: it accepts
// duplicate field names (the last wins), matches field names without regard
// to case, takes null for "absent", and quotes input in some of its errors.
// checkJSON walks a document against a small schema first and rejects all of
// that, without ever quoting a value from the input.

type jsonKind byte

const (
	kindString jsonKind = iota + 1
	kindNumber
	kindObject
	kindArray
)

func (k jsonKind) String() string {
	switch k {
	case kindString:
		return "a string"
	case kindNumber:
		return "a number"
	case kindObject:
		return "an object"
	default:
		return "an array"
	}
}

type schema struct {
	kind   jsonKind
	fields map[string]*schema // kindObject
	elem   *schema            // kindArray
}

var (
	schemaString  = &schema{kind: kindString}
	schemaNumber  = &schema{kind: kindNumber}
	schemaVersion = &schema{kind: kindObject, fields: map[string]*schema{
		"version": schemaString, "state": schemaString, "created": schemaString, "key": schemaString,
	}}
	schemaVersions = &schema{kind: kindArray, elem: schemaVersion}
	schemaKDF      = &schema{kind: kindObject, fields: map[string]*schema{
		"name": schemaString, "salt": schemaString, "n": schemaNumber, "r": schemaNumber, "p": schemaNumber,
	}}
	outerSchema = &schema{kind: kindObject, fields: map[string]*schema{
		"format": schemaString, "key_id": schemaString, "current": schemaString,
		"versions": schemaVersions, "kdf": schemaKDF, "sealed": schemaString,
	}}
	innerSchema = &schema{kind: kindObject, fields: map[string]*schema{
		"current": schemaString, "versions": schemaVersions,
	}}
)

// checkJSON reports whether b is one valid JSON value matching s, with no
// unknown, duplicate or null fields. Errors wrap core.ErrMalformed.
func checkJSON(b []byte, s *schema) error {
	if !utf8.Valid(b) {
		return fmt.Errorf("not valid UTF-8: %w", core.ErrMalformed)
	}
	if !json.Valid(b) {
		var v any
		return jsonError(json.Unmarshal(b, &v)) // only the syntax error's offset
	}
	c := &checker{b: b}
	c.ws()
	if err := c.value(s, "top level"); err != nil {
		return fmt.Errorf("%w: %w", err, core.ErrMalformed)
	}
	return nil
}

// checker walks a document that json.Valid accepted; it still checks every
// bound so that a mistake here cannot panic.
type checker struct {
	b []byte
	i int
}

func (c *checker) peek() byte {
	if c.i < len(c.b) {
		return c.b[c.i]
	}
	return 0
}

func (c *checker) ws() {
	for c.i < len(c.b) {
		switch c.b[c.i] {
		case ' ', '\t', '\n', '\r':
			c.i++
		default:
			return
		}
	}
}

func (c *checker) kindAt() jsonKind {
	switch c.peek() {
	case '{':
		return kindObject
	case '[':
		return kindArray
	case '"':
		return kindString
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return kindNumber
	}
	return 0 // null, true, false
}

func (c *checker) value(s *schema, what string) error {
	at := c.i
	k := c.kindAt()
	if k != s.kind {
		return fmt.Errorf("byte %d: %s must be %s", at, what, s.kind)
	}
	switch k {
	case kindObject:
		return c.object(s, what)
	case kindArray:
		return c.array(s, what)
	case kindString:
		return c.skipString()
	default:
		c.skipNumber()
		return nil
	}
}

func (c *checker) object(s *schema, what string) error {
	c.i++ // '{'
	seen := make(map[string]bool, len(s.fields))
	c.ws()
	if c.peek() == '}' {
		c.i++
		return nil
	}
	for {
		c.ws()
		at := c.i
		name, ok := c.fieldName()
		if !ok {
			return fmt.Errorf("byte %d: unknown field in %s", at, what)
		}
		fs, ok := s.fields[name]
		if !ok {
			return fmt.Errorf("byte %d: unknown field in %s", at, what)
		}
		if seen[name] {
			return fmt.Errorf("byte %d: duplicate field %q in %s", at, name, what)
		}
		seen[name] = true
		c.ws()
		if c.peek() != ':' {
			return fmt.Errorf("byte %d: want ':'", c.i)
		}
		c.i++
		c.ws()
		if err := c.value(fs, fmt.Sprintf("%q", name)); err != nil {
			return err
		}
		c.ws()
		switch c.peek() {
		case ',':
			c.i++
		case '}':
			c.i++
			return nil
		default:
			return fmt.Errorf("byte %d: want ',' or '}'", c.i)
		}
	}
}

func (c *checker) array(s *schema, what string) error {
	c.i++ // '['
	c.ws()
	if c.peek() == ']' {
		c.i++
		return nil
	}
	for n := 0; ; n++ {
		c.ws()
		if err := c.value(s.elem, fmt.Sprintf("%s[%d]", what, n)); err != nil {
			return err
		}
		c.ws()
		switch c.peek() {
		case ',':
			c.i++
		case ']':
			c.i++
			return nil
		default:
			return fmt.Errorf("byte %d: want ',' or ']'", c.i)
		}
	}
}

// fieldName reads a field name made only of [a-z0-9_], at most 16 bytes,
// without escapes; anything else is not a field of this format.
func (c *checker) fieldName() (string, bool) {
	if c.peek() != '"' {
		return "", false
	}
	start := c.i + 1
	for j := start; j < len(c.b) && j-start <= 16; j++ {
		ch := c.b[j]
		switch {
		case ch == '"':
			c.i = j + 1
			return string(c.b[start:j]), true
		case (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_':
		default:
			return "", false
		}
	}
	return "", false
}

func (c *checker) skipString() error {
	start := c.i
	c.i++ // '"'
	for c.i < len(c.b) {
		switch c.b[c.i] {
		case '\\':
			c.i += 2
		case '"':
			c.i++
			return nil
		default:
			c.i++
		}
	}
	return fmt.Errorf("byte %d: unterminated string", start)
}

func (c *checker) skipNumber() {
	for c.i < len(c.b) {
		switch c.b[c.i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return
		}
		c.i++
	}
}
