package awskmstest

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestSeedYAML(t *testing.T) {
	s := Seed{
		Keys: []Key{
			{ID: "k1", BackingKeys: [][]byte{bytes.Repeat([]byte{0xab}, 32)}, NextRotation: time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)},
			{ID: "k2"},
		},
		Aliases: []Alias{{Name: "alias/a", TargetKeyID: "k1"}},
	}
	y := string(s.yaml())
	for _, want := range []string{
		`KeyId: "k1"`,
		`- "` + strings.Repeat("ab", 32) + `"`,
		"NextKeyRotation: 2020-01-02T03:04:05Z",
		`KeyId: "k2"`,
		`AliasName: "alias/a"`,
		`TargetKeyId: "k1"`,
	} {
		if !strings.Contains(y, want) {
			t.Errorf("seed YAML lacks %q:\n%s", want, y)
		}
	}
	if strings.Count(y, "NextKeyRotation") != 1 {
		t.Errorf("seed YAML:\n%s", y)
	}
}

func TestBlobKeyVersion(t *testing.T) {
	arn := KeyARN("x")
	blob := append([]byte{byte(len(arn))}, arn...)
	blob = append(blob, 3, 0, 0, 0, 0xff)
	if v, err := BlobKeyVersion(blob); err != nil || v != 3 {
		t.Fatalf("BlobKeyVersion = %d, %v", v, err)
	}
	for _, b := range [][]byte{nil, {5}, blob[:len(blob)-1]} {
		if _, err := BlobKeyVersion(b); err == nil {
			t.Errorf("BlobKeyVersion(%x) succeeded", b)
		}
	}
}

func TestNewKeyID(t *testing.T) {
	a, b := NewKeyID(), NewKeyID()
	if a == b || len(a) != 36 || strings.Count(a, "-") != 4 {
		t.Fatalf("NewKeyID = %q, %q", a, b)
	}
}
