package registry

import (
	"fmt"
	"strings"
)

// maxNameLen is the longest name or version accepted (DESIGN.md §5).
const maxNameLen = 128

// ValidateName reports whether s is a valid model name or version string:
// it must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}. The rule keeps names
// usable as path elements, URL path segments and metric labels: no
// separators, no leading dot (so no "." or ".." and no hidden files), no
// spaces and nothing a shell would expand. The returned error wraps
// ErrInvalidName and quotes the offending input.
func ValidateName(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty", ErrInvalidName)
	}
	if len(s) > maxNameLen {
		return fmt.Errorf("%w: %.40q… is %d bytes long (at most %d)", ErrInvalidName, s, len(s), maxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if alnum || i > 0 && (c == '.' || c == '_' || c == '-') {
			continue
		}
		if i == 0 {
			return fmt.Errorf("%w: %q must start with a letter or digit", ErrInvalidName, s)
		}
		return fmt.Errorf("%w: %q contains %q (allowed: letters, digits, '.', '_', '-')", ErrInvalidName, s, rune(c))
	}
	return nil
}

// Ref identifies one model version: name:version.
type Ref struct {
	Name    string
	Version string
}

// String returns "name:version".
func (r Ref) String() string { return r.Name + ":" + r.Version }

// Validate checks both parts with ValidateName.
func (r Ref) Validate() error {
	if err := ValidateName(r.Name); err != nil {
		return fmt.Errorf("model name: %w", err)
	}
	if err := ValidateName(r.Version); err != nil {
		return fmt.Errorf("version of %s: %w", r.Name, err)
	}
	return nil
}

// ParseRef parses and validates "name:version". Both parts are required.
func ParseRef(s string) (Ref, error) {
	name, version, ok := strings.Cut(s, ":")
	if !ok {
		return Ref{}, fmt.Errorf("%w: %q is not name:version", ErrInvalidName, s)
	}
	r := Ref{Name: name, Version: version}
	if err := r.Validate(); err != nil {
		return Ref{}, err
	}
	return r, nil
}
