package firecracker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// apiDescription is Firecracker's swagger 2.0 API description (Apache-2.0,
// v1.17.0-dev), kept in testdata so a fresh clone tests against it;
// PADDOCK_FIRECRACKER_API overrides the path.
func apiDescription() string {
	if p := os.Getenv("PADDOCK_FIRECRACKER_API"); p != "" {
		return p
	}
	p, _ := filepath.Abs(filepath.Join("testdata", "firecracker-api.yaml"))
	return p
}

// swagger is the part of a swagger 2.0 document the validator uses.
type swagger struct {
	Paths       map[string]map[string]*operation `yaml:"paths"`
	Definitions map[string]*schema               `yaml:"definitions"`
}

type operation struct {
	OperationID string       `yaml:"operationId"`
	Parameters  []*parameter `yaml:"parameters"`
}

type parameter struct {
	Name     string  `yaml:"name"`
	In       string  `yaml:"in"`
	Required bool    `yaml:"required"`
	Type     string  `yaml:"type"`
	Schema   *schema `yaml:"schema"`
}

type schema struct {
	Ref                  string             `yaml:"$ref"`
	Type                 string             `yaml:"type"`
	Required             []string           `yaml:"required"`
	Properties           map[string]*schema `yaml:"properties"`
	AdditionalProperties yaml.Node          `yaml:"additionalProperties"`
	Items                *schema            `yaml:"items"`
	Enum                 []any              `yaml:"enum"`
	Minimum              *float64           `yaml:"minimum"`
	Maximum              *float64           `yaml:"maximum"`
}

func loadSwagger(path string) (*swagger, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s swagger
	if err := yaml.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(s.Paths) == 0 || len(s.Definitions) == 0 {
		return nil, fmt.Errorf("%s: no paths or definitions", path)
	}
	return &s, nil
}

// route finds the operation for method and a concrete path, and the values
// of its path parameters.
func (s *swagger) route(method, path string) (*operation, map[string]string, error) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	templates := make([]string, 0, len(s.Paths))
	for t := range s.Paths {
		templates = append(templates, t)
	}
	sort.Strings(templates)
	for _, t := range templates {
		tsegs := strings.Split(strings.Trim(t, "/"), "/")
		if len(tsegs) != len(segs) {
			continue
		}
		params := map[string]string{}
		ok := true
		for i, ts := range tsegs {
			if strings.HasPrefix(ts, "{") && strings.HasSuffix(ts, "}") {
				if segs[i] == "" {
					ok = false
					break
				}
				params[ts[1:len(ts)-1]] = segs[i]
			} else if ts != segs[i] {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		op := s.Paths[t][strings.ToLower(method)]
		if op == nil {
			return nil, nil, fmt.Errorf("method %s not allowed on %s", method, t)
		}
		return op, params, nil
	}
	return nil, nil, fmt.Errorf("no such path %s", path)
}

// checkRequest validates one request against the description: the method
// and path exist, path parameters are present, and the body matches the
// body parameter's schema (nothing else, no unknown fields).
func (s *swagger) checkRequest(method, path string, body []byte) error {
	op, pathParams, err := s.route(method, path)
	if err != nil {
		return err
	}
	var bodyParam *parameter
	for _, p := range op.Parameters {
		switch p.In {
		case "body":
			bodyParam = p
		case "path":
			if pathParams[p.Name] == "" {
				return fmt.Errorf("path parameter %s missing", p.Name)
			}
		}
	}
	if bodyParam == nil {
		if len(bytes.TrimSpace(body)) > 0 {
			return fmt.Errorf("%s %s takes no body", method, path)
		}
		return nil
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if bodyParam.Required {
			return fmt.Errorf("%s %s: body required", method, path)
		}
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("body is not JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the JSON body")
	}
	if err := s.validate(v, bodyParam.Schema, "body"); err != nil {
		return err
	}
	// Firecracker's rule for /drives/{drive_id} and
	// /network-interfaces/{iface_id}: the id in the path is the id in the
	// body.
	if obj, ok := v.(map[string]any); ok {
		for name, val := range pathParams {
			if bv, ok := obj[name]; ok && bv != val {
				return fmt.Errorf("path %s=%q differs from body %s=%v", name, val, name, bv)
			}
		}
	}
	return nil
}

func (s *swagger) resolve(sc *schema) (*schema, error) {
	for depth := 0; sc != nil && sc.Ref != ""; depth++ {
		name, ok := strings.CutPrefix(sc.Ref, "#/definitions/")
		if !ok || depth > 16 {
			return nil, fmt.Errorf("unsupported $ref %q", sc.Ref)
		}
		if sc = s.Definitions[name]; sc == nil {
			return nil, fmt.Errorf("undefined $ref %q", name)
		}
	}
	return sc, nil
}

// validate checks value v (decoded with UseNumber) against sc.
func (s *swagger) validate(v any, sc *schema, at string) error {
	sc, err := s.resolve(sc)
	if err != nil || sc == nil {
		return err
	}
	typ := sc.Type
	if typ == "" && sc.Properties != nil {
		typ = "object"
	}
	switch typ {
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want an object, got %T", at, v)
		}
		for _, r := range sc.Required {
			if _, ok := obj[r]; !ok {
				return fmt.Errorf("%s: required field %q missing", at, r)
			}
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ps, known := sc.Properties[k]
			if !known {
				if sc.AdditionalProperties.Kind == yaml.ScalarNode && sc.AdditionalProperties.Value == "true" {
					continue
				}
				if sc.AdditionalProperties.Kind == yaml.MappingNode {
					var extra schema
					if err := sc.AdditionalProperties.Decode(&extra); err != nil {
						return err
					}
					if err := s.validate(obj[k], &extra, at+"."+k); err != nil {
						return err
					}
					continue
				}
				return fmt.Errorf("%s: unknown field %q", at, k)
			}
			if err := s.validate(obj[k], ps, at+"."+k); err != nil {
				return err
			}
		}
	case "array":
		arr, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: want an array, got %T", at, v)
		}
		for i, e := range arr {
			if err := s.validate(e, sc.Items, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: want a string, got %T", at, v)
		}
		if len(sc.Enum) > 0 {
			found := false
			for _, e := range sc.Enum {
				found = found || fmt.Sprint(e) == str
			}
			if !found {
				return fmt.Errorf("%s: %q not one of %v", at, str, sc.Enum)
			}
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("%s: want a number, got %T", at, v)
		}
		f, err := n.Float64()
		if err != nil {
			return fmt.Errorf("%s: %v", at, err)
		}
		if typ == "integer" {
			if _, err := n.Int64(); err != nil {
				return fmt.Errorf("%s: want an integer, got %s", at, n)
			}
		}
		if sc.Minimum != nil && f < *sc.Minimum {
			return fmt.Errorf("%s: %s below minimum %v", at, n, *sc.Minimum)
		}
		if sc.Maximum != nil && f > *sc.Maximum {
			return fmt.Errorf("%s: %s above maximum %v", at, n, *sc.Maximum)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: want a boolean, got %T", at, v)
		}
	case "":
		// no constraint
	default:
		return fmt.Errorf("%s: unsupported schema type %q", at, typ)
	}
	return nil
}
