package opcua

import (
	"net/url"
	"sync"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/server"
	"github.com/gopcua/opcua/ua"
)

// NamespaceURI is the transformaly namespace's entry in the server's
// NamespaceArray (clients find its index by it).
const NamespaceURI = "urn:transformaly"

// node is one node of the transformaly namespace. The namespace is our own
// (server.NodeNameSpace cannot remove nodes, which a reload that drops a
// camera needs, and lets any client write any attribute).
type node struct {
	id       *ua.NodeID
	class    ua.NodeClass
	name     string // browse and display name
	typeDef  uint32 // namespace 0 type definition
	dataType uint32 // variables: namespace 0 data type
	array    bool   // variables: a one-dimensional array
	// value reads a variable's current value with its source timestamp.
	value func() *ua.DataValue
	// write sets a writable variable (nil: read only).
	write func(*ua.Variant) ua.StatusCode
	// call runs a method with its input arguments.
	call func([]*ua.Variant) ([]*ua.Variant, []ua.StatusCode, ua.StatusCode)

	parent    *node // nil: the root, under namespace 0's Objects folder
	parentRef uint32
	children  []*node

	// lib is the node as the library's own namespace 0 browse looks it up
	// (Objects -> transformaly needs the target's type definition).
	lib *server.Node
}

// space is the transformaly namespace: the daemon object with its
// Status, Version and Uptime, and the Cameras folder with an object per
// camera.
type space struct {
	mu    sync.RWMutex
	index uint16
	nodes map[string]*node // by NodeID.String()
	root  *node
	// cameras is the Cameras folder.
	cameras *node
	// writable says whether writes are allowed (opcua.allow_changes).
	writable bool
}

func newSpace(writable bool) *space {
	return &space{nodes: map[string]*node{}, writable: writable}
}

// nodeID is the string node id of a path in the namespace; camera names
// are escaped so that no name can reach another camera's nodes.
func (s *space) nodeID(path string) *ua.NodeID { return ua.NewStringNodeID(s.index, path) }

func cameraPath(camera string) string { return "Cameras/" + url.PathEscape(camera) }

// add creates a node under parent (nil: the root) and registers it.
func (s *space) add(parent *node, ref uint32, n *node) *node {
	n.parent, n.parentRef = parent, ref
	if parent != nil {
		parent.children = append(parent.children, n)
	}
	s.nodes[n.id.String()] = n
	return n
}

// remove unregisters a node and everything under it.
func (s *space) remove(n *node) {
	for _, c := range n.children {
		s.remove(c)
	}
	delete(s.nodes, n.id.String())
	if p := n.parent; p != nil {
		for i, c := range p.children {
			if c == n {
				p.children = append(p.children[:i:i], p.children[i+1:]...)
				break
			}
		}
	}
}

func (s *space) lookup(nid *ua.NodeID) *node {
	if nid == nil || nid.Namespace() != s.index {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.nodes[nid.String()]
}

// libNode is a node as the library's types see it.
func libNode(n *node) *server.Node {
	return server.NewNode(n.id, server.Attributes{
		ua.AttributeIDNodeClass:   server.DataValueFromValue(uint32(n.class)),
		ua.AttributeIDBrowseName:  server.DataValueFromValue(&ua.QualifiedName{NamespaceIndex: n.id.Namespace(), Name: n.name}),
		ua.AttributeIDDisplayName: server.DataValueFromValue(&ua.LocalizedText{EncodingMask: ua.LocalizedTextText, Text: n.name}),
		ua.AttributeIDDataType:    server.DataValueFromValue(ua.NewNumericExpandedNodeID(0, n.typeDef)),
	}, nil, nil)
}

// The NameSpace interface the library's server serves from.

var _ server.NameSpace = (*space)(nil)

func (s *space) Name() string { return NamespaceURI }

// AddNode is refused: only the daemon's cameras make nodes (the node
// management service is refused to clients).
func (s *space) AddNode(n *server.Node) *server.Node { return nil }

func (s *space) Node(nid *ua.NodeID) *server.Node {
	if n := s.lookup(nid); n != nil {
		return n.lib
	}
	return nil
}

func (s *space) Objects() *server.Node { return s.root.lib }
func (s *space) Root() *server.Node    { return s.root.lib }
func (s *space) ID() uint16            { return s.index }
func (s *space) SetID(i uint16)        { s.index = i }

// SetAttribute is refused: writes go through the Write service's own
// checks (a session allowed to change, a writable variable).
func (s *space) SetAttribute(*ua.NodeID, ua.AttributeID, *ua.DataValue) ua.StatusCode {
	return ua.StatusBadNotWritable
}

func (s *space) accessLevel(n *node) byte {
	level := byte(ua.AccessLevelTypeCurrentRead)
	if n.write != nil && s.writable {
		level |= byte(ua.AccessLevelTypeCurrentWrite)
	}
	return level
}

func dataValue(v any) *ua.DataValue {
	return &ua.DataValue{EncodingMask: ua.DataValueValue, Value: ua.MustVariant(v)}
}

func badValue(code ua.StatusCode) *ua.DataValue {
	return &ua.DataValue{EncodingMask: ua.DataValueStatusCode | ua.DataValueServerTimestamp, Status: code, ServerTimestamp: time.Now()}
}

func (s *space) Attribute(nid *ua.NodeID, attr ua.AttributeID) *ua.DataValue {
	n := s.lookup(nid)
	if n == nil {
		return badValue(ua.StatusBadNodeIDUnknown)
	}
	variable := n.class == ua.NodeClassVariable
	switch {
	case attr == ua.AttributeIDNodeID:
		return dataValue(n.id)
	case attr == ua.AttributeIDNodeClass:
		return dataValue(int32(n.class))
	case attr == ua.AttributeIDBrowseName:
		return dataValue(&ua.QualifiedName{NamespaceIndex: s.index, Name: n.name})
	case attr == ua.AttributeIDDisplayName:
		return dataValue(&ua.LocalizedText{EncodingMask: ua.LocalizedTextText, Text: n.name})
	case attr == ua.AttributeIDDescription:
		return dataValue(&ua.LocalizedText{})
	case attr == ua.AttributeIDWriteMask || attr == ua.AttributeIDUserWriteMask:
		return dataValue(uint32(0))
	case attr == ua.AttributeIDEventNotifier && n.class == ua.NodeClassObject:
		return dataValue(byte(0))
	case (attr == ua.AttributeIDExecutable || attr == ua.AttributeIDUserExecutable) && n.class == ua.NodeClassMethod:
		return dataValue(true)
	case attr == ua.AttributeIDValue && variable:
		s.mu.RLock()
		v := n.value()
		s.mu.RUnlock()
		v.ServerTimestamp = time.Now()
		v.EncodingMask |= ua.DataValueServerTimestamp
		return v
	case attr == ua.AttributeIDDataType && variable:
		return dataValue(ua.NewNumericNodeID(0, n.dataType))
	case attr == ua.AttributeIDValueRank && variable:
		if n.array {
			return dataValue(int32(1))
		}
		return dataValue(int32(-1))
	case attr == ua.AttributeIDArrayDimensions && variable:
		if n.array {
			return dataValue([]uint32{0})
		}
		return dataValue([]uint32{})
	case (attr == ua.AttributeIDAccessLevel || attr == ua.AttributeIDUserAccessLevel) && variable:
		return dataValue(s.accessLevel(n))
	case attr == ua.AttributeIDMinimumSamplingInterval && variable:
		return dataValue(float64(0))
	case attr == ua.AttributeIDHistorizing && variable:
		return dataValue(false)
	}
	return badValue(ua.StatusBadAttributeIDInvalid)
}

// refSupertype is the reference type hierarchy the namespace uses
// (OPC UA Part 5), to match a browse's reference type with its subtypes.
var refSupertype = map[uint32]uint32{
	id.HierarchicalReferences:    id.References,
	id.NonHierarchicalReferences: id.References,
	id.HasChild:                  id.HierarchicalReferences,
	id.Organizes:                 id.HierarchicalReferences,
	id.Aggregates:                id.HasChild,
	id.HasComponent:              id.Aggregates,
	id.HasProperty:               id.Aggregates,
	id.HasTypeDefinition:         id.NonHierarchicalReferences,
}

func refMatches(want *ua.NodeID, subtypes bool, have uint32) bool {
	if want == nil || (want.Namespace() == 0 && want.IntID() == 0) {
		return true // a null reference type: all of them
	}
	if want.Namespace() != 0 {
		return false
	}
	for t := have; ; {
		if t == want.IntID() {
			return true
		}
		p, ok := refSupertype[t]
		if !subtypes || !ok {
			return false
		}
		t = p
	}
}

// typeNames are the namespace 0 types the nodes are defined by.
var typeNames = map[uint32]struct {
	name  string
	class ua.NodeClass
}{
	id.BaseObjectType:       {"BaseObjectType", ua.NodeClassObjectType},
	id.FolderType:           {"FolderType", ua.NodeClassObjectType},
	id.BaseDataVariableType: {"BaseDataVariableType", ua.NodeClassVariableType},
	id.PropertyType:         {"PropertyType", ua.NodeClassVariableType},
}

func (s *space) Browse(bd *ua.BrowseDescription) *ua.BrowseResult {
	n := s.lookup(bd.NodeID)
	if n == nil {
		return &ua.BrowseResult{StatusCode: ua.StatusBadNodeIDUnknown}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	forward := bd.BrowseDirection == ua.BrowseDirectionForward || bd.BrowseDirection == ua.BrowseDirectionBoth
	inverse := bd.BrowseDirection == ua.BrowseDirectionInverse || bd.BrowseDirection == ua.BrowseDirectionBoth
	var refs []*ua.ReferenceDescription
	keep := func(ref uint32, isForward bool, class ua.NodeClass) bool {
		return refMatches(bd.ReferenceTypeID, bd.IncludeSubtypes, ref) && (bd.NodeClassMask == 0 || bd.NodeClassMask&uint32(class) != 0)
	}
	if forward && n.typeDef != 0 {
		t := typeNames[n.typeDef]
		if keep(id.HasTypeDefinition, true, t.class) {
			refs = append(refs, &ua.ReferenceDescription{
				ReferenceTypeID: ua.NewNumericNodeID(0, id.HasTypeDefinition), IsForward: true,
				NodeID: ua.NewNumericExpandedNodeID(0, n.typeDef), BrowseName: &ua.QualifiedName{Name: t.name},
				DisplayName: &ua.LocalizedText{EncodingMask: ua.LocalizedTextText, Text: t.name}, NodeClass: t.class,
				TypeDefinition: ua.NewTwoByteExpandedNodeID(0),
			})
		}
	}
	describe := func(ref uint32, isForward bool, target *node) *ua.ReferenceDescription {
		return &ua.ReferenceDescription{
			ReferenceTypeID: ua.NewNumericNodeID(0, ref), IsForward: isForward,
			NodeID: ua.NewExpandedNodeID(target.id, "", 0), BrowseName: &ua.QualifiedName{NamespaceIndex: s.index, Name: target.name},
			DisplayName: &ua.LocalizedText{EncodingMask: ua.LocalizedTextText, Text: target.name}, NodeClass: target.class,
			TypeDefinition: ua.NewNumericExpandedNodeID(0, target.typeDef),
		}
	}
	if forward {
		for _, c := range n.children {
			if keep(c.parentRef, true, c.class) {
				refs = append(refs, describe(c.parentRef, true, c))
			}
		}
	}
	if inverse {
		if p := n.parent; p != nil && keep(n.parentRef, false, p.class) {
			refs = append(refs, describe(n.parentRef, false, p))
		} else if p == nil && keep(id.Organizes, false, ua.NodeClassObject) {
			refs = append(refs, &ua.ReferenceDescription{
				ReferenceTypeID: ua.NewNumericNodeID(0, id.Organizes), NodeID: ua.NewNumericExpandedNodeID(0, id.ObjectsFolder),
				BrowseName: &ua.QualifiedName{Name: "Objects"}, DisplayName: &ua.LocalizedText{EncodingMask: ua.LocalizedTextText, Text: "Objects"},
				NodeClass: ua.NodeClassObject, TypeDefinition: ua.NewNumericExpandedNodeID(0, id.FolderType),
			})
		}
	}
	return &ua.BrowseResult{StatusCode: ua.StatusGood, References: refs}
}
