CREATE TABLE orders (id bigint PRIMARY KEY, note text);
CREATE INDEX orders_note ON orders (note);
INSERT INTO orders VALUES (1, 'first');
