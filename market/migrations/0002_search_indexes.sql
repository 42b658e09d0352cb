-- search orders pages by name; price filters scan listings by price
CREATE INDEX dataset_meta_name ON dataset_meta (name, root);
CREATE INDEX listings_price_root ON listings (price_gib, root);
