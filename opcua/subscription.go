package opcua

import (
	"context"
	"log/slog"
	"time"

	"github.com/gopcua/opcua/ua"
	"github.com/gopcua/opcua/uasc"
)

// subscription publishes its monitored items' changes to its session,
// each notification once, in order, at most one publish response an
// interval; with nothing to publish it sends a keep-alive every
// keepAlive intervals, and it ends after lifetime intervals without a
// publish request from its client.
type subscription struct {
	id        uint32
	sess      *session
	interval  time.Duration
	keepAlive uint32
	lifetime  uint32

	// Guarded by Server.mu.
	items   map[uint32]*monitoredItem
	queue   []*ua.MonitoredItemNotification
	seq     uint32
	dropped bool // notifications lost to a full queue since the last publish

	stop chan struct{}
}

type monitoredItem struct {
	id, handle uint32
	node       *ua.NodeID
	attr       ua.AttributeID
	mode       ua.MonitoringMode
	sub        *subscription
}

func (s *Server) createSubscription(sess *session, req *ua.CreateSubscriptionRequest) ua.Response {
	interval := time.Duration(req.RequestedPublishingInterval * float64(time.Millisecond))
	interval = min(max(interval, 10*time.Millisecond), time.Hour)
	keepAlive := min(max(req.RequestedMaxKeepAliveCount, 1), 10000)
	lifetime := max(req.RequestedLifetimeCount, 3*keepAlive)
	s.mu.Lock()
	if len(sess.subs) >= maxSubscriptions {
		s.mu.Unlock()
		return fault(req.RequestHeader, ua.StatusBadTooManySubscriptions)
	}
	s.nextSubID++
	sub := &subscription{id: s.nextSubID, sess: sess, interval: interval, keepAlive: keepAlive, lifetime: lifetime,
		items: map[uint32]*monitoredItem{}, stop: make(chan struct{})}
	sess.subs[sub.id] = sub
	s.mu.Unlock()
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.runSubscription(sub) }()
	return &ua.CreateSubscriptionResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK), SubscriptionID: sub.id,
		RevisedPublishingInterval: float64(interval) / float64(time.Millisecond), RevisedLifetimeCount: lifetime, RevisedMaxKeepAliveCount: keepAlive}
}

func (s *Server) modifySubscription(sess *session, req *ua.ModifySubscriptionRequest) ua.Response {
	s.mu.Lock()
	sub := sess.subs[req.SubscriptionID]
	s.mu.Unlock()
	if sub == nil {
		return fault(req.RequestHeader, ua.StatusBadSubscriptionIDInvalid)
	}
	// The subscription keeps its settings: the response says which.
	return &ua.ModifySubscriptionResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK),
		RevisedPublishingInterval: float64(sub.interval) / float64(time.Millisecond), RevisedLifetimeCount: sub.lifetime, RevisedMaxKeepAliveCount: sub.keepAlive}
}

func (s *Server) setPublishingMode(sess *session, req *ua.SetPublishingModeRequest) ua.Response {
	results := make([]ua.StatusCode, len(req.SubscriptionIDs))
	s.mu.Lock()
	for i, sid := range req.SubscriptionIDs {
		if sess.subs[sid] == nil {
			results[i] = ua.StatusBadSubscriptionIDInvalid
		}
	}
	s.mu.Unlock()
	return &ua.SetPublishingModeResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK), Results: results, DiagnosticInfos: []*ua.DiagnosticInfo{}}
}

func (s *Server) deleteSubscriptions(sess *session, req *ua.DeleteSubscriptionsRequest) ua.Response {
	results := make([]ua.StatusCode, len(req.SubscriptionIDs))
	s.mu.Lock()
	for i, sid := range req.SubscriptionIDs {
		if sub := sess.subs[sid]; sub != nil {
			s.stopSubscription(sub)
		} else {
			results[i] = ua.StatusBadSubscriptionIDInvalid
		}
	}
	s.mu.Unlock()
	return &ua.DeleteSubscriptionsResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK), Results: results, DiagnosticInfos: []*ua.DiagnosticInfo{}}
}

// stopSubscription ends a subscription and its items (under s.mu).
func (s *Server) stopSubscription(sub *subscription) {
	if _, ok := sub.sess.subs[sub.id]; !ok {
		return
	}
	delete(sub.sess.subs, sub.id)
	for _, it := range sub.items {
		s.unmonitor(it)
	}
	close(sub.stop)
}

// unmonitor removes an item from the node index (under s.mu).
func (s *Server) unmonitor(it *monitoredItem) {
	key := it.node.String()
	list := s.monitored[key]
	for i, other := range list {
		if other == it {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(s.monitored, key)
	} else {
		s.monitored[key] = list
	}
	delete(it.sub.items, it.id)
}

func (s *Server) createMonitoredItems(sess *session, req *ua.CreateMonitoredItemsRequest) ua.Response {
	s.mu.Lock()
	sub := sess.subs[req.SubscriptionID]
	s.mu.Unlock()
	if sub == nil {
		return fault(req.RequestHeader, ua.StatusBadSubscriptionIDInvalid)
	}
	results := make([]*ua.MonitoredItemCreateResult, len(req.ItemsToCreate))
	var initial []*monitoredItem
	for i, c := range req.ItemsToCreate {
		res := &ua.MonitoredItemCreateResult{RevisedSamplingInterval: float64(sub.interval) / float64(time.Millisecond), RevisedQueueSize: maxQueued,
			FilterResult: ua.NewExtensionObject(nil)}
		results[i] = res
		if c.ItemToMonitor == nil || c.ItemToMonitor.NodeID == nil || c.RequestedParameters == nil {
			res.StatusCode = ua.StatusBadNodeIDInvalid
			continue
		}
		if v := s.attribute(c.ItemToMonitor.NodeID, c.ItemToMonitor.AttributeID); v.Status == ua.StatusBadNodeIDUnknown || v.Status == ua.StatusBadAttributeIDInvalid {
			res.StatusCode = v.Status
			continue
		}
		s.mu.Lock()
		s.nextItemID++
		it := &monitoredItem{id: s.nextItemID, handle: c.RequestedParameters.ClientHandle, node: c.ItemToMonitor.NodeID,
			attr: c.ItemToMonitor.AttributeID, mode: c.MonitoringMode, sub: sub}
		if _, alive := sess.subs[sub.id]; alive {
			sub.items[it.id] = it
			s.monitored[it.node.String()] = append(s.monitored[it.node.String()], it)
			initial = append(initial, it)
		}
		s.mu.Unlock()
		res.MonitoredItemID = it.id
	}
	// Each item's first notification is its current value.
	for _, it := range initial {
		s.notifyItem(it, s.attribute(it.node, it.attr))
	}
	return &ua.CreateMonitoredItemsResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK), Results: results, DiagnosticInfos: []*ua.DiagnosticInfo{}}
}

func (s *Server) modifyMonitoredItems(sess *session, req *ua.ModifyMonitoredItemsRequest) ua.Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := sess.subs[req.SubscriptionID]
	if sub == nil {
		return fault(req.RequestHeader, ua.StatusBadSubscriptionIDInvalid)
	}
	results := make([]*ua.MonitoredItemModifyResult, len(req.ItemsToModify))
	for i, m := range req.ItemsToModify {
		results[i] = &ua.MonitoredItemModifyResult{RevisedSamplingInterval: float64(sub.interval) / float64(time.Millisecond),
			RevisedQueueSize: maxQueued, FilterResult: ua.NewExtensionObject(nil)}
		if sub.items[m.MonitoredItemID] == nil {
			results[i].StatusCode = ua.StatusBadMonitoredItemIDInvalid
		}
	}
	return &ua.ModifyMonitoredItemsResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK), Results: results, DiagnosticInfos: []*ua.DiagnosticInfo{}}
}

func (s *Server) setMonitoringMode(sess *session, req *ua.SetMonitoringModeRequest) ua.Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := sess.subs[req.SubscriptionID]
	if sub == nil {
		return fault(req.RequestHeader, ua.StatusBadSubscriptionIDInvalid)
	}
	results := make([]ua.StatusCode, len(req.MonitoredItemIDs))
	for i, iid := range req.MonitoredItemIDs {
		if it := sub.items[iid]; it != nil {
			it.mode = req.MonitoringMode
		} else {
			results[i] = ua.StatusBadMonitoredItemIDInvalid
		}
	}
	return &ua.SetMonitoringModeResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK), Results: results, DiagnosticInfos: []*ua.DiagnosticInfo{}}
}

func (s *Server) deleteMonitoredItems(sess *session, req *ua.DeleteMonitoredItemsRequest) ua.Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := sess.subs[req.SubscriptionID]
	if sub == nil {
		return fault(req.RequestHeader, ua.StatusBadSubscriptionIDInvalid)
	}
	results := make([]ua.StatusCode, len(req.MonitoredItemIDs))
	for i, iid := range req.MonitoredItemIDs {
		if it := sub.items[iid]; it != nil {
			s.unmonitor(it)
		} else {
			results[i] = ua.StatusBadMonitoredItemIDInvalid
		}
	}
	return &ua.DeleteMonitoredItemsResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK), Results: results, DiagnosticInfos: []*ua.DiagnosticInfo{}}
}

// queuePublish keeps a publish request until a subscription of its
// session has something to send (or a keep-alive is due).
func (s *Server) queuePublish(sess *session, sc *uasc.SecureChannel, reqID uint32, req *ua.PublishRequest) ua.Response {
	s.mu.Lock()
	none := len(sess.subs) == 0
	s.mu.Unlock()
	if none {
		return fault(req.RequestHeader, ua.StatusBadNoSubscription)
	}
	select {
	case sess.publish <- publishRequest{sc: sc, reqID: reqID, req: req}:
		return nil
	default:
		return fault(req.RequestHeader, ua.StatusBadTooManyPublishRequests)
	}
}

// changed queues a node's new value for the items that monitor it (other
// attributes than the value are read as they are now).
func (s *Server) changed(ch change) {
	s.mu.Lock()
	items := append([]*monitoredItem(nil), s.monitored[ch.node.String()]...)
	s.mu.Unlock()
	for _, it := range items {
		v := ch.value
		if it.attr != ua.AttributeIDValue {
			v = s.attribute(ch.node, it.attr)
		}
		s.notifyItem(it, v)
	}
}

func (s *Server) notifyItem(it *monitoredItem, v *ua.DataValue) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if it.mode == ua.MonitoringModeDisabled || it.sub.items[it.id] != it {
		return
	}
	sub := it.sub
	if len(sub.queue) >= maxQueued {
		sub.queue, sub.dropped = sub.queue[1:], true
	}
	sub.queue = append(sub.queue, &ua.MonitoredItemNotification{ClientHandle: it.handle, Value: v})
}

// runSubscription publishes a subscription's notifications every interval.
func (s *Server) runSubscription(sub *subscription) {
	t := time.NewTicker(sub.interval)
	defer t.Stop()
	var idle, starved uint32
	for {
		select {
		case <-sub.stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		pending := len(sub.queue) > 0
		s.mu.Unlock()
		if !pending {
			if idle++; idle < sub.keepAlive {
				continue
			}
		}
		select {
		case pr := <-sub.sess.publish:
			idle, starved = 0, 0
			s.publish(sub, pr)
		default:
			if starved++; starved > sub.lifetime {
				slog.Info("OPC UA subscription ended: its client stopped asking for notifications", "user", sub.sess.user)
				s.mu.Lock()
				s.stopSubscription(sub)
				s.mu.Unlock()
				return
			}
		}
	}
}

// publish answers a publish request with the subscription's queued
// notifications (a keep-alive when none).
func (s *Server) publish(sub *subscription, pr publishRequest) {
	s.mu.Lock()
	n := min(len(sub.queue), maxPerPublish)
	notes := sub.queue[:n:n]
	sub.queue = sub.queue[n:]
	more := len(sub.queue) > 0
	if sub.dropped {
		slog.Warn("OPC UA notifications dropped: a subscription's client falls behind", "user", sub.sess.user, "queue", maxQueued)
		sub.dropped = false
	}
	msg := &ua.NotificationMessage{SequenceNumber: sub.seq + 1, PublishTime: time.Now(), NotificationData: []*ua.ExtensionObject{}}
	if n > 0 {
		sub.seq++
		msg.NotificationData = []*ua.ExtensionObject{ua.NewExtensionObject(&ua.DataChangeNotification{MonitoredItems: notes, DiagnosticInfos: []*ua.DiagnosticInfo{}})}
	}
	s.mu.Unlock()
	acks := make([]ua.StatusCode, len(pr.req.SubscriptionAcknowledgements))
	resp := &ua.PublishResponse{ResponseHeader: responseHeader(pr.req.RequestHeader, ua.StatusOK), SubscriptionID: sub.id,
		AvailableSequenceNumbers: []uint32{}, MoreNotifications: more, NotificationMessage: msg, Results: acks, DiagnosticInfos: []*ua.DiagnosticInfo{}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := pr.sc.SendResponseWithContext(ctx, pr.reqID, resp); err != nil {
		slog.Debug("OPC UA publish response not sent", "err", err)
	}
}
